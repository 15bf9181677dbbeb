"""Ray Tune search over YaRN's factors for a model and a target context length.

    python tune/yarn_search.py --config tune/configs/yarn-zoo.yaml
    ray job submit --working-dir . -- python tune/yarn_search.py --config tune/configs/yarn-zoo.yaml

Searched: ``factor``, ``beta_fast``, ``beta_slow`` and a multiplier on YaRN's attention factor.
The objective comes from ``nexus_ray.rope.evaluate`` at the target length: passkey accuracy
minus ``ppl_weight`` x log perplexity, with a penalty when short-context perplexity (at the
model's trained length, under the same scaling) rises more than ``short_ppl_bound`` over the
unscaled model. Betas act only through the integer correction range they round to, so trials
that map to the same (factor, correction range, attention factor) are evaluated once: a
result cache in the experiment folder serves the duplicates. Writes ``best-rope.yaml`` (the
``rope_parameters`` block for the model's config), ``trials.csv``, ``summary.json`` and
``search.png`` into ``storage_path/<name>-<target_length>``; the best is re-evaluated and
must match. Run the command again to resume.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import yaml
from pydantic import Field, model_validator

from nexus_ray.tuning.common import (
    SearchError,
    SearchSettings,
    fit,
    output_dir,
    plot_search,
    search_main,
    trials_in_order,
    trials_to_reach,
)


class YarnSearchConfig(SearchSettings):
    name: str = "yarn-search"
    model: str = Field("rope-base", description="zoo name or model directory")
    target_length: int = Field(description="tokens the scaled model must handle")
    factor: tuple[float, float] = (1.0, 16.0)
    factor_step: float = Field(0.25, gt=0, description="factors are searched on this grid")
    beta_fast: tuple[float, float] = (8.0, 128.0)
    beta_slow: tuple[float, float] = (0.25, 4.0)
    attention_scale: tuple[float, float] = Field((0.8, 1.25), description="x YaRN's default attention factor")
    ppl_weight: float = Field(0.5, ge=0)
    short_ppl_bound: float = Field(
        0.10, ge=0, description="allowed relative rise of short-context perplexity"
    )
    documents: int = Field(4, ge=1, description="perplexity documents per length")
    passkey_trials: int = Field(8, ge=1, description="passkey examples per (length, depth)")

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


def rope_of(point: dict):
    from nexus_ray.config import RopeConfig
    from nexus_ray.rope.scaling import yarn_attention_factor

    rope = RopeConfig(
        rope_type="yarn", factor=point["factor"], beta_fast=point["beta_fast"], beta_slow=point["beta_slow"]
    )
    attention = yarn_attention_factor(rope) * point["attention_scale"]
    return rope.model_copy(update={"attention_factor": round(attention, 6)})


def dedupe_key(model: str, point: dict) -> str:
    """What the scaling actually depends on: factor, the integer correction range, attention."""
    from nexus_ray.rope.apply import load_config as load_model_config
    from nexus_ray.rope.scaling import RopeBase, yarn_correction_range
    from nexus_ray.zoo.registry import resolve

    rope = rope_of(point)
    base = RopeBase.from_hf_config(load_model_config(resolve(model), None))
    low, high = yarn_correction_range(rope, base)
    key = json.dumps([round(rope.factor, 4), low, high, round(rope.attention_factor, 4)])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def measure(cfg: YarnSearchConfig, rope, short_ppl_unscaled: float | None) -> dict:
    """The objective's parts for one scaling (None: the unscaled model)."""
    from nexus_ray.rope.evaluate import evaluate
    from nexus_ray.zoo.registry import resolve

    model_dir = resolve(cfg.model)
    original = _trained_length(model_dir)
    out = evaluate(
        model_dir,
        rope,
        [original, cfg.target_length],
        documents_per_length=cfg.documents,
        trials=cfg.passkey_trials,
        seed=cfg.seed,
    )
    short = out["perplexity"][str(original)]
    ppl = out["perplexity"][str(cfg.target_length)]
    passkey = out["passkey"][str(cfg.target_length)]["accuracy"]
    value = passkey - cfg.ppl_weight * math.log(ppl)
    reference = short_ppl_unscaled if short_ppl_unscaled is not None else short
    excess = short / reference - 1 - cfg.short_ppl_bound
    if excess > 0:
        value -= 1.0 + excess  # over the bound: worse than any feasible point
    return {
        "objective": value,
        "ppl_target": ppl,
        "passkey_target": passkey,
        "ppl_short": short,
        "short_ppl_rise": short / reference - 1,
    }


def _trained_length(model_dir: Path) -> int:
    return json.loads((model_dir / "config.json").read_text())["max_position_embeddings"]


def trial(point: dict, search: dict, short_ppl_unscaled: float, cache_dir: str) -> None:
    from ray import tune

    cfg = YarnSearchConfig.model_validate(search)
    cache = Path(cache_dir) / f"{dedupe_key(cfg.model, point)}.json"
    if cache.exists():
        tune.report(json.loads(cache.read_text()) | {"cached": True})
        return
    rope = rope_of(point)
    metrics = measure(cfg, rope, short_ppl_unscaled) | {"attention_factor": rope.attention_factor}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(metrics))
    tune.report(metrics | {"cached": False})


def run(cfg: YarnSearchConfig, fresh: bool = False) -> dict:
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from nexus_ray.config import RopeConfig
    from nexus_ray.rope.apply import load_config as load_model_config
    from nexus_ray.rope.apply import rope_parameters
    from nexus_ray.rope.scaling import RopeBase
    from nexus_ray.zoo.registry import resolve

    # One experiment per target length: `--target-length 1024` does not resume the 512 search.
    cfg = cfg.model_copy(update={"name": f"{cfg.name}-{cfg.target_length}"})
    model_dir = resolve(cfg.model)
    original = _trained_length(model_dir)
    if cfg.target_length <= original:
        raise SearchError(
            f"target_length {cfg.target_length} is within the model's trained {original} tokens"
        )
    unscaled = measure(cfg, None, None)
    default_factor = cfg.target_length / original
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
    local = output_dir(cfg)
    trainable = tune.with_parameters(
        trial,
        search=cfg.model_dump(),
        short_ppl_unscaled=unscaled["ppl_short"],
        cache_dir=str(local / "dedupe-cache"),
    )
    results, _ = fit(trainable, cfg, space, "objective", searcher, None, fresh)
    ordered = trials_in_order(results)
    if not ordered:
        raise SearchError("no trial finished")
    best = max(ordered, key=lambda r: r.metrics["objective"])
    best_rope = rope_of(best.config)
    recheck = measure(cfg, best_rope, unscaled["ppl_short"])
    base = RopeBase.from_hf_config(load_model_config(model_dir, None))
    block = {
        "rope_parameters": rope_parameters(best_rope, base),
        "max_position_embeddings": max(cfg.target_length, original),
    }
    values = [r.metrics["objective"] for r in ordered]
    summary = {
        "target_length": cfg.target_length,
        "trained_length": original,
        "best": {
            "config": {k: best.config[k] for k in space},
            "rope": best_rope.model_dump(exclude_none=True),
            "metrics": {
                k: best.metrics[k] for k in ("objective", "ppl_target", "passkey_target", "ppl_short")
            },
            "recheck": recheck,
        },
        "baselines": {"no scaling": unscaled, f"default yarn (factor {default_factor:g})": default_yarn},
        "trials": len(values),
        "evaluated": sum(not r.metrics.get("cached", False) for r in ordered),
        "trials_to_95pct_of_best": trials_to_reach(values),
    }
    local.mkdir(parents=True, exist_ok=True)
    (local / "best-rope.yaml").write_text(yaml.safe_dump(block, sort_keys=False))
    results.get_dataframe().to_csv(local / "trials.csv", index=False)
    (local / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    coefficients = {k: [r.config[k] for r in ordered] for k in space}
    plot_search(
        values,
        coefficients,
        {k: v["objective"] for k, v in summary["baselines"].items()},
        f"YaRN search: {cfg.model} at {cfg.target_length} tokens",
        local / "search.png",
    )
    print(
        f"\nbest: objective {best.metrics['objective']:.3f} (re-evaluated {recheck['objective']:.3f}); "
        + ", ".join(f"{k} {v['objective']:.3f}" for k, v in summary["baselines"].items())
    )
    print(f"wrote {local / 'best-rope.yaml'}, trials.csv, summary.json, search.png")
    return summary


def main(argv: list[str] | None = None) -> int:
    return search_main(
        argv,
        "tune/yarn_search.py",
        __doc__,
        YarnSearchConfig,
        run,
        "tune/configs/yarn-zoo.yaml",
        {"target_length": (int, "overrides target_length")},
    )
