"""Apply a RoPE scaling to a model, for transformers or vLLM, through the model's own config.

``config_overrides(rope, model_config, engine)`` is the one function for both engines: the
config keys to override (``rope_parameters`` and ``max_position_embeddings``), so the model's
own rotary code does the scaling. transformers takes them on its config
(``load_config``); vLLM takes them as ``hf_overrides``. Where the installed vLLM would
drop a YaRN key, it is converted into one it honours, or the call fails: a scaling must
never be silently changed. Static NTK-aware scaling (``ntk``) is the default RoPE with a
larger ``rope_theta``, which both engines honour exactly.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Literal

from nexus_ray.config import RopeConfig
from nexus_ray.rope.scaling import (
    RopeBase,
    check_fits,
    ntk_theta,
    original_length,
    target_length,
    yarn_attention_factor,
    yarn_mscale,
)

Engine = Literal["hf", "vllm"]
_YARN_OPTIONAL = ("beta_fast", "beta_slow", "mscale", "mscale_all_dim", "attention_factor", "truncate")


def rope_parameters(rope: RopeConfig, base: RopeBase) -> dict[str, Any]:
    """The transformers v5 ``rope_parameters`` dict of a scaling (every value explicit)."""
    kind = rope.rope_type
    params: dict[str, Any] = {"rope_type": kind, "rope_theta": base.theta}
    if kind == "default":
        return params
    if kind == "ntk":
        return {"rope_type": "default", "rope_theta": ntk_theta(rope, base)}
    params["factor"] = rope.factor
    if kind in ("yarn", "llama3", "longrope"):
        params["original_max_position_embeddings"] = original_length(rope, base)
    if kind == "yarn":
        params |= {k: getattr(rope, k) for k in _YARN_OPTIONAL if getattr(rope, k) is not None}
    elif kind == "llama3":
        params["low_freq_factor"] = rope.low_freq_factor or 1.0
        params["high_freq_factor"] = rope.high_freq_factor or 4.0
    elif kind == "longrope":
        params["long_factor"] = list(rope.long_factor or [])
        params["short_factor"] = list(rope.short_factor or [])
        if rope.attention_factor is not None:
            params["attention_factor"] = rope.attention_factor
    return params


def config_overrides(rope: RopeConfig, model_config: Any, engine: Engine) -> dict[str, Any]:
    """Config keys that make ``engine`` run the model with this scaling.

    ``max_position_embeddings`` becomes the target length (factor x original), except for
    transformers' dynamic NTK, which reads it as the original length and rescales per forward.
    vLLM's dynamic NTK is static: the base it computes for the target length is used at every
    length (``max_trained_positions`` is the original length).
    """
    base = RopeBase.from_hf_config(model_config)
    check_fits(rope, base)
    params = rope_parameters(rope, base)
    length = target_length(rope, base)
    if rope.rope_type == "dynamic":
        if engine == "hf":
            return {"rope_parameters": params, "max_position_embeddings": original_length(rope, base)}
        params["max_trained_positions"] = original_length(rope, base)
    if engine == "vllm":
        params = _for_installed_vllm(rope, params)
    return {"rope_parameters": params, "max_position_embeddings": max(length, base.max_position_embeddings)}


def load_config(model_dir: str | Path, rope: RopeConfig | None):
    """A transformers config for ``model_dir`` with the scaling applied (unchanged if ``rope`` is None)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    if rope is not None:
        for key, value in config_overrides(rope, config, "hf").items():
            setattr(config, key, value)
        config.validate_rope()
    return config


def load_causal_lm(model_dir: str | Path, rope: RopeConfig | None, dtype: Any = None):
    """The model of ``model_dir`` with the scaling applied, in eval mode."""
    from transformers import AutoModelForCausalLM

    config = load_config(model_dir, rope)
    return AutoModelForCausalLM.from_pretrained(model_dir, config=config, dtype=dtype).eval()


def vllm_yarn_keys() -> set[str]:
    """The YaRN keys the installed vLLM forwards from ``rope_parameters`` to its YaRN class.

    vLLM's ``get_rope`` passes only a whitelist of keys; some versions leave
    ``attention_factor`` out of it (and silently use 0.1 ln s + 1), older ones take
    ``attn_factor`` (a multiplier of that default) instead.
    """
    from vllm.model_executor.layers import rotary_embedding as vllm_rope

    source = inspect.getsource(vllm_rope.get_rope)
    accepted = set(inspect.signature(vllm_rope.YaRNScalingRotaryEmbedding.__init__).parameters)
    return {k for k in (*_YARN_OPTIONAL, "attn_factor") if f'"{k}"' in source and k in accepted}


def _for_installed_vllm(
    rope: RopeConfig, params: dict[str, Any], keys: set[str] | None = None
) -> dict[str, Any]:
    """Rewrite YaRN keys the installed vLLM would drop into ones it honours, or fail."""
    if rope.rope_type == "longrope":
        # vLLM's LongRoPE class takes the magnitude as short/long mscale, never attention_factor.
        factor = params.pop("attention_factor", None)
        if factor is not None:
            params |= {"short_mscale": factor, "long_mscale": factor}
        return params
    if rope.rope_type != "yarn":
        return params
    keys = vllm_yarn_keys() if keys is None else keys
    if "attention_factor" not in keys and (
        "attention_factor" in params or ("mscale" in params and "mscale_all_dim" in params)
    ):
        if "attn_factor" not in keys:
            raise ValueError("the installed vLLM honours neither attention_factor nor attn_factor for YaRN")
        target = yarn_attention_factor(rope)
        for k in ("attention_factor", "mscale", "mscale_all_dim"):
            params.pop(k, None)
        params["attn_factor"] = target / yarn_mscale(rope.factor or 1.0)
    harmless = {"truncate"} if params.get("truncate", True) else set()  # true is every version's default
    if "mscale_all_dim" not in params:
        harmless.add("mscale")  # read only together with mscale_all_dim
    dropped = sorted(k for k in _YARN_OPTIONAL if k in params and k not in keys | harmless)
    if dropped:
        raise ValueError(f"the installed vLLM would silently drop YaRN keys {', '.join(dropped)}")
    return params
