"""Pydantic models for every config file, and the one place for defaults.

YAML files validate against these with messages that name the offending key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EngineConfig(_Strict):
    """One model and the engine that runs it. ``engine`` is the only switch between backends."""

    engine: Literal["hf", "vllm"] = "hf"
    model: str = Field(description="zoo model name or path to an HF model directory")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    device: str | None = Field(None, description="hf only: cpu, cuda, cuda:1; default: cuda if present")
    max_batch_size: int = Field(256, ge=1, description="hf only: samples per forward batch")
    # vLLM engine options, passed through unchanged.
    max_model_len: int | None = Field(None, ge=16)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    tensor_parallel_size: int = Field(1, ge=1)
    enable_prefix_caching: bool = True
    enforce_eager: bool = False
    hf_overrides: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0
    num_gpus: float = Field(0, ge=0, description="GPUs the worker that holds this engine reserves")


class RewardConfig(EngineConfig):
    """A PRM: scores are read at the last token of each ``step + step_separator`` segment.

    ``pooler: token`` reads the positive-class probability at those tokens from per-token
    classification (the zoo PRM, any ``*ForTokenClassification``); ``pooler: step`` uses the
    model's native step pooler (vLLM only; Qwen2.5-Math-PRM with ``step_separator: <extra_0>``).
    """

    step_separator: str = "\n"
    pooler: Literal["token", "step"] = "token"
    positive_label: int = Field(1, ge=0)

    @model_validator(mode="after")
    def _step_pooler_needs_vllm(self) -> "RewardConfig":
        if self.pooler == "step" and self.engine != "vllm":
            raise ValueError("pooler 'step' is vLLM's native step pooler: set engine: vllm")
        return self


class ModelsConfig(_Strict):
    """The policy and the PRM a deployment runs (``deployments/*.yaml``)."""

    policy: EngineConfig
    prm: RewardConfig


def local_models(
    engine: Literal["hf", "vllm"] = "hf", policy: str = "arith-policy", prm: str = "arith-prm"
) -> ModelsConfig:
    """The embedded default: models on this machine's CPU. vLLM's CPU build runs the zoo in
    float32, eagerly, with a small KV cache (``gpu_memory_utilization`` is a share of RAM)."""
    options: dict[str, Any] = {"engine": engine, "dtype": "float32"}
    if engine == "vllm":
        options |= {"max_model_len": 256, "gpu_memory_utilization": 0.1, "enforce_eager": True}
    return ModelsConfig(policy=EngineConfig(model=policy, **options), prm=RewardConfig(model=prm, **options))


class ConfigError(ValueError):
    """A config file is missing or invalid; the message names the file and the keys."""


def load_yaml(path: str | Path, model: type[BaseModel]) -> BaseModel:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    try:
        return model.model_validate(data)
    except ValidationError as err:
        lines = [f"{path}: invalid {model.__name__}:"]
        for e in err.errors():
            where = ".".join(str(p) for p in e["loc"]) or "(top level)"
            lines.append(f"  {where}: {e['msg']}")
        raise ConfigError("\n".join(lines)) from None
