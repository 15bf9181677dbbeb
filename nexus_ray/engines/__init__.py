"""Model backends behind the ``PolicyEngine`` / ``RewardEngine`` protocols.

``build_policy_engine`` and ``build_reward_engine`` are the only places that look at
``config.engine``; everything else sees the protocols.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from nexus_ray.config import EngineConfig, RewardConfig
from nexus_ray.engines.base import PolicyEngine, RewardEngine
from nexus_ray.zoo.registry import resolve

C = TypeVar("C", bound=EngineConfig)


def build_policy_engine(config: EngineConfig) -> PolicyEngine:
    path = resolve(config.model)
    config = with_rope(config, path)
    if config.engine == "vllm":
        from nexus_ray.engines.vllm import VLLMPolicyEngine

        return VLLMPolicyEngine(config, path)
    if config.merge is not None:  # a base and experts merged at test time (hf only: config.py)
        from nexus_ray.engines.t3 import T3PolicyEngine

        experts = [resolve(e) for e in config.experts]
        return T3PolicyEngine(
            path,
            experts,
            config.merge,
            config.device,
            _hf_dtype(config),
            config.max_batch_size,
            config.hf_overrides,
        )
    from nexus_ray.engines.hf import HFPolicyEngine

    return HFPolicyEngine(
        path,
        config.device,
        _hf_dtype(config),
        config.max_batch_size,
        config.hf_overrides,
        config.prefix_cache_tokens if config.enable_prefix_caching else 0,
    )


def build_reward_engine(config: RewardConfig) -> RewardEngine:
    path = resolve(config.model)
    config = with_rope(config, path)
    if config.engine == "vllm":
        from nexus_ray.engines.vllm import VLLMRewardEngine

        return VLLMRewardEngine(config, path)
    from nexus_ray.engines.hf import HFRewardEngine

    return HFRewardEngine(
        path,
        config.device,
        _hf_dtype(config),
        config.step_separator,
        config.max_batch_size,
        config.positive_label,
        config.hf_overrides,
        config.format,
        config.step_tag,
        config.system_prompt,
        config.prefix_cache_tokens if config.enable_prefix_caching else 0,
    )


def with_rope(config: C, path: Path) -> C:
    """The config with its ``rope`` section turned into ``hf_overrides`` for its engine.

    Explicit ``hf_overrides`` of the same keys win; vLLM's ``max_model_len`` defaults to the
    scaled context.
    """
    if config.rope is None:
        return config
    from transformers import AutoConfig

    from nexus_ray.rope.apply import config_overrides

    overrides = config_overrides(config.rope, AutoConfig.from_pretrained(path), config.engine)
    update: dict = {"hf_overrides": {**overrides, **config.hf_overrides}}
    if config.engine == "vllm" and config.max_model_len is None:
        update["max_model_len"] = overrides["max_position_embeddings"]
    return config.model_copy(update=update)


def _hf_dtype(config: EngineConfig) -> str:
    return "float32" if config.dtype == "auto" else config.dtype
