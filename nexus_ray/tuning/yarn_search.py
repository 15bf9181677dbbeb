"""Ray Tune search over YaRN's factors for a model and a target context length.

    python tune/yarn_search.py --config tune/configs/yarn-zoo.yaml
    ray job submit --working-dir . -- python tune/yarn_search.py --config tune/configs/yarn-zoo.yaml

Searched: ``factor``, ``beta_fast``, ``beta_slow`` and a multiplier on YaRN's attention factor.
The objective, bound, cache and outcome files are ``nexus_ray.tuning.rope_search``'s (document
perplexity at the target length). Betas act only through the integer correction range they
round to, so trials that map to the same (factor, correction range, attention factor) are
evaluated once. The searcher is Optuna's TPE, seeded, starting from default YaRN at
target / trained length. Run the command again to resume.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from nexus_ray.config import RopeConfig
from nexus_ray.tuning.rope_search import (
    RopeSearchConfig,
    for_target,
    measure,
    model_base,
    rope_search_main,
    search,
    trained_length,
)


class YarnSearchConfig(RopeSearchConfig):
    name: str = "yarn-search"
    factor: tuple[float, float] = (1.0, 16.0)
    factor_step: float = Field(0.25, gt=0, description="factors are searched on this grid")
    beta_fast: tuple[float, float] = (8.0, 128.0)
    beta_slow: tuple[float, float] = (0.25, 4.0)
    attention_scale: tuple[float, float] = Field((0.8, 1.25), description="x YaRN's default attention factor")

    @model_validator(mode="after")
    def _ranges(self) -> YarnSearchConfig:
        if not 1.0 <= self.factor[0] <= self.factor[1]:
            raise ValueError(f"factor: expected 1 <= low <= high, got {self.factor}")
        if self.beta_slow[1] >= self.beta_fast[0]:
            raise ValueError(
                f"beta_slow's range {self.beta_slow} must lie below beta_fast's {self.beta_fast}"
            )
        if (
            not 0 < self.beta_slow[0] <= self.beta_slow[1]
            or not 0 < self.attention_scale[0] <= self.attention_scale[1]
        ):
            raise ValueError("beta_slow and attention_scale ranges must be positive and ordered")
        return self


def rope_of(cfg: YarnSearchConfig, point: dict) -> RopeConfig:
    from nexus_ray.rope.scaling import yarn_attention_factor

    rope = RopeConfig(
        rope_type="yarn", factor=point["factor"], beta_fast=point["beta_fast"], beta_slow=point["beta_slow"]
    )
    attention = yarn_attention_factor(rope) * point["attention_scale"]
    return rope.model_copy(update={"attention_factor": round(attention, 6)})


def key_of(cfg: YarnSearchConfig, rope: RopeConfig) -> list:
    """What the scaling actually depends on: factor, the integer correction range, attention."""
    from nexus_ray.rope.scaling import yarn_correction_range

    low, high = yarn_correction_range(rope, model_base(cfg.model))
    return [round(rope.factor, 4), low, high, round(rope.attention_factor, 4)]


def run(cfg: YarnSearchConfig, fresh: bool = False) -> dict:
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    cfg = for_target(cfg)
    unscaled = measure(cfg, None, None)
    default_factor = cfg.target_length / trained_length(cfg.model)
    default_yarn = measure(cfg, RopeConfig(rope_type="yarn", factor=default_factor), unscaled["ppl_short"])
    lo, hi = cfg.factor
    space = {
        "factor": tune.quniform(lo, hi, cfg.factor_step),
        "beta_fast": tune.loguniform(*cfg.beta_fast),
        "beta_slow": tune.loguniform(*cfg.beta_slow),
        "attention_scale": tune.quniform(*cfg.attention_scale, 0.01),
    }
    start = {
        "factor": round(min(max(default_factor, lo), hi) / cfg.factor_step) * cfg.factor_step,
        "beta_fast": min(max(32.0, cfg.beta_fast[0]), cfg.beta_fast[1]),
        "beta_slow": min(max(1.0, cfg.beta_slow[0]), cfg.beta_slow[1]),
        "attention_scale": 1.0,
    }
    searcher = OptunaSearch(points_to_evaluate=[start], seed=cfg.seed)
    baselines = {"no scaling": unscaled, f"default yarn (factor {default_factor:g})": default_yarn}
    return search(cfg, rope_of, key_of, space, searcher, baselines, "YaRN search", fresh)


def main(argv: list[str] | None = None) -> int:
    return rope_search_main(argv, "yarn", __doc__, YarnSearchConfig, run)
