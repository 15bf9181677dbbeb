"""LongRoPE's factor search: the parametrisation keeps LongRoPE's constraint, and a tiny search on
the zoo base at 4x its context beats no scaling, with a best that re-evaluates the same."""

from __future__ import annotations

import json

import pytest
import yaml
from test_tune import tiny_rope_search

from nexus_ray.config import RopeConfig
from nexus_ray.rope.apply import config_overrides, load_config
from nexus_ray.tuning.longrope_search import rescale_factors
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
