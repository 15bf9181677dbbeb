"""Ray Tune search over LongRoPE's per-pair rescale factors for a model and a target length.

    python tune/longrope_search.py --config tune/configs/longrope-zoo.yaml
    ray job submit --working-dir . -- python tune/longrope_search.py --config tune/configs/longrope-zoo.yaml

LongRoPE (2024) divides each rotary pair's frequency by its own factor, found by an evolutionary
search, with factors non-decreasing from high to low frequency and the first pairs optionally left
unscaled. Here the factors are parametrised so that constraint holds by construction
(``rescale_factors``): ``knots`` steps in [0, 1] whose cumulative sums place log-factors at evenly
spaced knots, interpolated to every pair. The searcher is Optuna's CMA-ES when the installed
Optuna can run it (it needs the ``cmaes`` package), else Optuna's TPE; seeded, starting from a
log-linear ramp up to target / trained length past the middle of the ``unscaled_pairs`` range. The
objective is LongRoPE2's needle-driven one: passkey accuracy minus ``ppl_weight`` x the log
perplexity of the passkey's answer tokens at the target length, under the YaRN search's short-
context perplexity bound (``nexus_ray.tuning.rope_search``). ``short_factor`` stays 1: within the
trained length the model runs unscaled, as LongRoPE's short factors intend; only the attention
factor (searched as a multiplier on LongRoPE's default) reaches short inputs. Run the command
again to resume.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from nexus_ray.config import RopeConfig
from nexus_ray.tuning.common import SearchError
from nexus_ray.tuning.rope_search import (
    RopeSearchConfig,
    for_target,
    measure,
    model_base,
    rope_search_main,
    search,
    trained_length,
)


class LongRopeSearchConfig(RopeSearchConfig):
    name: str = "longrope-search"
    target_perplexity: Literal["documents", "needle"] = "needle"
    knots: int = Field(4, ge=1, description="factors are interpolated between this many knots")
    unscaled_pairs: tuple[int, int] = Field(
        (0, 8), description="range searched for the leading (highest-frequency) pairs kept at factor 1"
    )
    max_factor: float = Field(2.0, ge=1, description="largest factor, x target / trained length")
    attention_scale: tuple[float, float] = Field(
        (0.8, 1.25), description="x LongRoPE's default attention factor"
    )

    @model_validator(mode="after")
    def _ranges(self) -> LongRopeSearchConfig:
        if not 0 <= self.unscaled_pairs[0] <= self.unscaled_pairs[1]:
            raise ValueError(f"unscaled_pairs: expected 0 <= low <= high, got {self.unscaled_pairs}")
        if not 0 < self.attention_scale[0] <= self.attention_scale[1]:
            raise ValueError("attention_scale range must be positive and ordered")
        return self


def rescale_factors(steps: list[float], pairs: int, unscaled: int, largest: float) -> list[float]:
    """Per-pair divisors, pair 0 (highest frequency) first: 1 for the first ``unscaled`` pairs, then
    log-linear between knots evenly spaced over the rest, whose log-factors are cumulative sums of
    ``steps`` (each in [0, 1], a share of ln(largest) / len(steps)). Non-decreasing and within
    [1, largest] by construction, so every point a searcher proposes is a valid LongRoPE point."""
    if not 0 <= unscaled < pairs or not all(0 <= s <= 1 for s in steps) or largest < 1:
        raise ValueError(f"bad parametrisation: steps {steps}, {unscaled} of {pairs} pairs unscaled")
    logs = math.log(largest) * np.cumsum(steps) / len(steps)
    knots = np.linspace(unscaled, pairs - 1, len(steps))
    scaled = np.exp(np.interp(np.arange(pairs), knots, logs))
    return [1.0 if i < unscaled else round(float(f), 6) for i, f in enumerate(scaled)]


def _steps(point: dict) -> list[float]:
    return [point[k] for k in sorted(point) if k.startswith("step_")]


def rope_of(cfg: LongRopeSearchConfig, point: dict) -> RopeConfig:
    from nexus_ray.rope.scaling import longrope_attention_factor

    base = model_base(cfg.model)
    factor = cfg.target_length / trained_length(cfg.model)
    pairs = base.dim // 2
    long = rescale_factors(_steps(point), pairs, point["unscaled"], cfg.max_factor * factor)
    rope = RopeConfig(rope_type="longrope", factor=factor, long_factor=long, short_factor=[1.0] * pairs)
    attention = longrope_attention_factor(rope, base) * point["attention_scale"]
    return rope.model_copy(update={"attention_factor": round(attention, 6)})


def key_of(cfg: LongRopeSearchConfig, rope: RopeConfig) -> list:
    """What the scaling depends on: the long factors and the attention factor (4 decimals)."""
    return [round(f, 4) for f in rope.long_factor or []] + [round(rope.attention_factor or 1.0, 4)]


def sampler(seed: int):
    """CMA-ES (LongRoPE searches evolutionarily) when the installed Optuna can run it, else TPE."""
    import optuna

    try:
        import cmaes  # noqa: F401  (Optuna's CMA-ES sampler runs on it)
    except ImportError:
        print("cmaes is not installed: searching with Optuna's TPE instead of CMA-ES")
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.CmaEsSampler(seed=seed)


def run(cfg: LongRopeSearchConfig, fresh: bool = False) -> dict:
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    cfg = for_target(cfg)
    pairs = model_base(cfg.model).dim // 2
    if cfg.unscaled_pairs[1] >= pairs:
        raise SearchError(f"unscaled_pairs {cfg.unscaled_pairs} must stay below the model's {pairs} pairs")
    factor = cfg.target_length / trained_length(cfg.model)
    unscaled = measure(cfg, None, None)
    steps = {f"step_{i}": tune.uniform(0.0, 1.0) for i in range(cfg.knots)}
    space = steps | {
        "unscaled": tune.randint(cfg.unscaled_pairs[0], cfg.unscaled_pairs[1] + 1),
        "attention_scale": tune.quniform(*cfg.attention_scale, 0.01),
    }
    ramp = math.log(factor) / math.log(cfg.max_factor * factor)  # the last knot at target / trained
    middle = sum(cfg.unscaled_pairs) // 2
    start = {k: ramp for k in steps} | {"unscaled": middle, "attention_scale": 1.0}
    uniform = dict.fromkeys(steps, 1.0) | {"unscaled": 0, "attention_scale": 1.0}
    uniform_cfg = cfg.model_copy(update={"max_factor": 1.0})
    baselines = {
        "no scaling": unscaled,
        f"uniform longrope (factor {factor:g})": measure(
            cfg, rope_of(uniform_cfg, uniform), unscaled["ppl_short"]
        ),
    }
    searcher = OptunaSearch(points_to_evaluate=[start], sampler=sampler(cfg.seed))
    return search(cfg, rope_of, key_of, space, searcher, baselines, "LongRoPE search", fresh)


def main(argv: list[str] | None = None) -> int:
    return rope_search_main(argv, "longrope", __doc__, LongRopeSearchConfig, run)
