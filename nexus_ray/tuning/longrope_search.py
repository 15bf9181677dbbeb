"""Ray Tune search over LongRoPE's per-pair rescale factors for a model and a target length.

    python tune/longrope_search.py --config tune/configs/longrope-zoo.yaml
    ray job submit --working-dir . -- python tune/longrope_search.py --config tune/configs/longrope-zoo.yaml

LongRoPE (2024) divides each rotary pair's frequency by its own factor, found by an evolutionary
search whose first population holds PI, NTK and YaRN's factors, with factors non-decreasing from
high to low frequency and the first pairs optionally left unscaled. Here the factors are
parametrised so that constraint holds by construction, in one of two shapes (``shape``):

- ``ramp`` (the default, ``ramp_factors``): YaRN's shape made free: factor 1 up to pair
  ``ramp_low``, the top factor from ``ramp_low + ramp_width`` on, and between them YaRN's blend of
  the two with its keep-fraction raised to ``curve``. The search starts from YaRN's own factors
  for the target (its correction range, curve 1, top = target / trained, YaRN's attention
  factor), so it starts where YaRN is and can only keep or improve it;
- ``knots`` (``rescale_factors``): ``knots`` steps in [0, 1] whose cumulative sums place
  log-factors at evenly spaced knots, interpolated to every pair, from a log-linear ramp up to
  target / trained length past the middle of the ``unscaled_pairs`` range.

The searcher is Optuna's CMA-ES, its first mean at the start point, when the installed Optuna
can run it (it needs the ``cmaes`` package), else Optuna's TPE; seeded. The objective is
LongRoPE2's needle-driven one: passkey accuracy minus ``ppl_weight`` x the log perplexity of the
passkey's answer tokens at the target length, under the YaRN search's short-context perplexity
bound (``nexus_ray.tuning.rope_search``).
``short_factor`` stays 1: within the trained length the model runs unscaled, as LongRoPE's short
factors intend; only the attention factor (searched as a multiplier on LongRoPE's default)
reaches short inputs. Run the command again to resume.
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
    shape: Literal["ramp", "knots"] = Field(
        "ramp", description="ramp: YaRN's shape made free, starting at YaRN; knots: log-factors at knots"
    )
    curve: tuple[float, float] = Field((0.5, 2.0), description="ramp: the keep-fraction's exponent")
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


def ramp_factors(low: float, width: float, top: float, pairs: int, curve: float = 1.0) -> list[float]:
    """Per-pair divisors, pair 0 first: 1 up to pair ``low``, ``top`` from ``low + width`` on, and
    between them YaRN's blend 1 / ((1 - k) / top + k) of the keep-fraction k (1 -> 0 linearly over
    the ramp) raised to ``curve``. With YaRN's correction range, curve 1 and top = its factor these
    are YaRN's factors; non-decreasing and within [1, top] for every point."""
    if width <= 0 or top < 1 or curve <= 0:
        raise ValueError(f"bad ramp: low {low}, width {width}, top {top}, curve {curve}")
    keep = (1.0 - np.clip((np.arange(pairs) - low) / width, 0.0, 1.0)) ** curve
    return [round(float(f), 6) for f in 1.0 / ((1.0 - keep) / top + keep)]


def yarn_start(cfg: LongRopeSearchConfig) -> dict:
    """The ``ramp`` point that is YaRN's scaling for the target (its factors and attention factor)."""
    from nexus_ray.rope.scaling import longrope_attention_factor, yarn_correction_range, yarn_mscale

    base = model_base(cfg.model)
    factor = cfg.target_length / trained_length(cfg.model)
    low, high = yarn_correction_range(RopeConfig(rope_type="yarn", factor=factor), base)
    pairs = base.dim // 2
    longrope = RopeConfig(
        rope_type="longrope", factor=factor, long_factor=[1.0] * pairs, short_factor=[1.0] * pairs
    )
    scale = yarn_mscale(factor) / longrope_attention_factor(longrope, base)
    return {
        "ramp_low": float(low),
        "ramp_width": float(max(high - low, 0.5)),
        "top": 1.0,
        "curve": 1.0,
        "attention_scale": round(min(max(scale, cfg.attention_scale[0]), cfg.attention_scale[1]), 2),
    }


def _steps(point: dict) -> list[float]:
    return [point[k] for k in sorted(point) if k.startswith("step_")]


def rope_of(cfg: LongRopeSearchConfig, point: dict) -> RopeConfig:
    from nexus_ray.rope.scaling import longrope_attention_factor

    base = model_base(cfg.model)
    factor = cfg.target_length / trained_length(cfg.model)
    pairs = base.dim // 2
    if cfg.shape == "ramp":
        top = point["top"] * factor
        long = ramp_factors(point["ramp_low"], point["ramp_width"], top, pairs, point["curve"])
    else:
        long = rescale_factors(_steps(point), pairs, point["unscaled"], cfg.max_factor * factor)
    rope = RopeConfig(rope_type="longrope", factor=factor, long_factor=long, short_factor=[1.0] * pairs)
    attention = longrope_attention_factor(rope, base) * point["attention_scale"]
    return rope.model_copy(update={"attention_factor": round(attention, 6)})


def key_of(cfg: LongRopeSearchConfig, rope: RopeConfig) -> list:
    """What the scaling depends on: the long factors and the attention factor (4 decimals)."""
    return [round(f, 4) for f in rope.long_factor or []] + [round(rope.attention_factor or 1.0, 4)]


def sampler(seed: int, start: dict):
    """CMA-ES (LongRoPE searches evolutionarily) centred on ``start`` when the installed Optuna
    can run it, else TPE."""
    import optuna

    try:
        import cmaes  # noqa: F401  (Optuna's CMA-ES sampler runs on it)
    except ImportError:
        print("cmaes is not installed: searching with Optuna's TPE instead of CMA-ES")
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.CmaEsSampler(x0=start, seed=seed)


def run(cfg: LongRopeSearchConfig, fresh: bool = False) -> dict:
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    cfg = for_target(cfg)
    pairs = model_base(cfg.model).dim // 2
    if cfg.unscaled_pairs[1] >= pairs:
        raise SearchError(f"unscaled_pairs {cfg.unscaled_pairs} must stay below the model's {pairs} pairs")
    factor = cfg.target_length / trained_length(cfg.model)
    unscaled = measure(cfg, None, None)
    attention = {"attention_scale": tune.quniform(*cfg.attention_scale, 0.01)}
    if cfg.shape == "ramp":
        space = attention | {
            "ramp_low": tune.uniform(0.0, pairs - 1.0),
            "ramp_width": tune.uniform(0.5, float(pairs)),
            "top": tune.uniform(1.0, cfg.max_factor),
            "curve": tune.uniform(*cfg.curve),
        }
        start = yarn_start(cfg)
    else:
        steps = {f"step_{i}": tune.uniform(0.0, 1.0) for i in range(cfg.knots)}
        space = (
            attention | steps | {"unscaled": tune.randint(cfg.unscaled_pairs[0], cfg.unscaled_pairs[1] + 1)}
        )
        ramp = math.log(factor) / math.log(cfg.max_factor * factor)  # the last knot at target / trained
        start = {k: ramp for k in steps} | {"unscaled": sum(cfg.unscaled_pairs) // 2, "attention_scale": 1.0}
    knots = cfg.model_copy(update={"max_factor": 1.0, "shape": "knots"})
    uniform = {f"step_{i}": 1.0 for i in range(cfg.knots)} | {"unscaled": 0, "attention_scale": 1.0}
    baselines = {
        "no scaling": unscaled,
        f"uniform longrope (factor {factor:g})": measure(cfg, rope_of(knots, uniform), unscaled["ppl_short"]),
    }
    searcher = OptunaSearch(points_to_evaluate=[start], sampler=sampler(cfg.seed, start))
    return search(cfg, rope_of, key_of, space, searcher, baselines, "LongRoPE search", fresh)


def main(argv: list[str] | None = None) -> int:
    return rope_search_main(argv, "longrope", __doc__, LongRopeSearchConfig, run)
