"""LongRoPE's factor search: the parametrisation keeps LongRoPE's constraint, and a tiny search on
the zoo base at 4x its context beats no scaling, with a best that re-evaluates the same."""

from __future__ import annotations

import json

import pytest
import yaml
from test_tune import tiny_rope_search

from nexus_ray.config import RopeConfig
from nexus_ray.rope.apply import config_overrides, load_config
from nexus_ray.rope.scaling import RopeBase, compute
from nexus_ray.tuning.longrope_search import (
    LongRopeSearchConfig,
    ramp_factors,
    rescale_factors,
    rope_of,
    yarn_start,
)
from nexus_ray.tuning.rope_search import model_base
from nexus_ray.zoo.registry import resolve


@pytest.mark.parametrize(
    "steps,unscaled",
    [([0.3, 0.0, 1.0, 0.5], 0), ([1.0], 3), ([0.0, 0.0], 5), ([0.9, 0.2, 0.7, 0.1, 1.0, 0.4], 2)],
)
def test_rescale_factors_are_monotone_one_per_pair_and_bounded(steps, unscaled):
    factors = rescale_factors(steps, 16, unscaled, 8.0)
    assert len(factors) == 16
    assert factors[:unscaled] == [1.0] * unscaled
    assert factors == sorted(factors)
    assert 1.0 <= factors[0] and factors[-1] <= 8.0
    assert factors[-1] == pytest.approx(8.0 ** (sum(steps) / len(steps)), rel=1e-5)


@pytest.mark.parametrize("steps,unscaled", [([1.5], 0), ([-0.1, 0.5], 0), ([0.5], 16)])
def test_rescale_factors_reject_points_outside_the_parametrisation(steps, unscaled):
    with pytest.raises(ValueError, match="bad parametrisation"):
        rescale_factors(steps, 16, unscaled, 8.0)


@pytest.mark.parametrize("low,width,top,curve", [(0, 6, 8, 1), (2.5, 3.2, 11.0, 0.6), (9.7, 0.5, 4, 2.0)])
def test_ramp_factors_are_monotone_and_bounded(low, width, top, curve):
    factors = ramp_factors(low, width, top, 16, curve)
    assert len(factors) == 16 and factors == sorted(factors)
    assert factors[0] == 1.0 and factors[-1] == pytest.approx(top)
    assert all(f == 1.0 for f in factors[: int(low) + 1])


@pytest.mark.parametrize("target", [512, 1024])
def test_the_ramp_search_starts_at_yarn(target):
    """LongRoPE seeds its search with YaRN: the start point's long factors are YaRN's, its
    attention factor YaRN's within the search's 0.01 grid."""
    cfg = LongRopeSearchConfig(model="rope-base", target_length=target, storage_path="unused")
    rope = rope_of(cfg, yarn_start(cfg))
    base: RopeBase = model_base("rope-base")
    yarn = compute(RopeConfig(rope_type="yarn", factor=target / 128), base)
    original = compute(RopeConfig(rope_type="default"), base)
    want = original.inv_freq / yarn.inv_freq
    assert rope.long_factor == pytest.approx(list(want), rel=1e-5)
    assert rope.attention_factor == pytest.approx(yarn.attention_factor, abs=0.015)


def test_longrope_search_beats_no_scaling_at_4x_and_its_best_reevaluates_the_same(tmp_path):
    out, _ = tiny_rope_search("longrope_search.py", "longrope-zoo.yaml", "tiny-longrope", tmp_path)
    block = yaml.safe_load((out / "best-rope.yaml").read_text())
    params = block["rope_parameters"]
    assert params["rope_type"] == "longrope" and block["max_position_embeddings"] == 512
    assert len(params["long_factor"]) == 16 and params["short_factor"] == [1.0] * 16
    assert params["long_factor"] == sorted(params["long_factor"])
    # The summary's scaling is an engine's `rope:`; vLLM gets the attention factor as its mscales.
    rope = RopeConfig.model_validate(json.loads((out / "summary.json").read_text())["best"]["rope"])
    vllm = config_overrides(rope, load_config(resolve("rope-base"), None), "vllm")["rope_parameters"]
    assert vllm["long_factor"] == params["long_factor"]
    assert vllm["short_mscale"] == vllm["long_mscale"] == params["attention_factor"]
