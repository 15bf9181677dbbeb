"""Model backends behind the ``PolicyEngine`` / ``RewardEngine`` protocols.

``build_policy_engine`` and ``build_reward_engine`` are the only places that look at
``config.engine``; everything else sees the protocols.
"""

from __future__ import annotations

from nexus_ray.config import EngineConfig, RewardConfig
from nexus_ray.engines.base import PolicyEngine, RewardEngine
from nexus_ray.zoo.registry import resolve


def build_policy_engine(config: EngineConfig) -> PolicyEngine:
    path = resolve(config.model)
    if config.engine == "vllm":
        from nexus_ray.engines.vllm import VLLMPolicyEngine

        return VLLMPolicyEngine(config, path)
    from nexus_ray.engines.hf import HFPolicyEngine

    return HFPolicyEngine(path, config.device, _hf_dtype(config), config.max_batch_size)


def build_reward_engine(config: RewardConfig) -> RewardEngine:
    path = resolve(config.model)
    if config.engine == "vllm":
        from nexus_ray.engines.vllm import VLLMRewardEngine

        return VLLMRewardEngine(config, path)
    from nexus_ray.engines.hf import HFRewardEngine

    return HFRewardEngine(
        path, config.device, _hf_dtype(config), config.step_separator, config.max_batch_size,
        config.positive_label,
    )


def _hf_dtype(config: EngineConfig) -> str:
    return "float32" if config.dtype == "auto" else config.dtype
