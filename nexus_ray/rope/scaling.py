"""RoPE scalings: inverse frequencies and attention factor, exactly as transformers v5 computes them.

Each method maps a ``RopeConfig`` and the model's rotary geometry (``RopeBase``) to
``(inv_freq, attention_factor)``: the per-pair rotation speeds and the multiplier applied to
cos and sin (so attention logits scale by its square). The math is written out here, in
float64, instead of calling transformers, so that it can be checked against transformers'
own functions (tests/test_rope.py), used to drive vLLM, and searched over without a model.

transformers' quirks are kept on purpose (betas of 0 mean the default there; here they are
rejected by ``RopeConfig``): the correction range is clipped to dim - 1, not dim/2 - 1;
``mscale`` counts only together with ``mscale_all_dim``; an explicit ``attention_factor`` wins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from nexus_ray.config import RopeConfig

YARN_BETA_FAST = 32.0
YARN_BETA_SLOW = 1.0
LLAMA3_LOW_FREQ_FACTOR = 1.0
LLAMA3_HIGH_FREQ_FACTOR = 4.0


@dataclass(frozen=True)
class RopeBase:
    """What a scaling needs from the model: rotary dimension, base theta, trained length."""

    dim: int
    theta: float
    max_position_embeddings: int

    @classmethod
    def from_hf_config(cls, config: Any) -> RopeBase:
        """From a transformers config (v5 ``rope_parameters`` or a v4-style ``rope_theta``)."""
        params = getattr(config, "rope_parameters", None) or {}
        theta = params.get("rope_theta", getattr(config, "rope_theta", None))
        if theta is None:
            raise ValueError("the model config has no rope_theta: is it a RoPE model?")
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        partial = params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0)) or 1.0
        return cls(int(head_dim * partial), float(theta), int(config.max_position_embeddings))


@dataclass(frozen=True)
class Scaling:
    """The result: ``inv_freq`` has ``dim // 2`` entries (float64)."""

    inv_freq: np.ndarray
    attention_factor: float


def original_length(rope: RopeConfig, base: RopeBase) -> int:
    """The pretraining context the scaling starts from."""
    return rope.original_max_position_embeddings or base.max_position_embeddings


def target_length(rope: RopeConfig, base: RopeBase) -> int:
    """The context the scaling is meant to reach: factor x original (the original if unscaled)."""
    return math.ceil(original_length(rope, base) * (rope.factor or 1.0))


def _default_inv_freq(dim: int, theta: float) -> np.ndarray:
    return 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's recommended sqrt(1/t) = 0.1 * mscale * ln(s) + 1 (1 when s <= 1)."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def yarn_attention_factor(rope: RopeConfig) -> float:
    """Explicit ``attention_factor``, else mscale/mscale_all_dim (both set), else 0.1 ln s + 1."""
    factor = rope.factor or 1.0
    if rope.attention_factor is not None:
        return rope.attention_factor
    if rope.mscale and rope.mscale_all_dim:
        return yarn_mscale(factor, rope.mscale) / yarn_mscale(factor, rope.mscale_all_dim)
    return yarn_mscale(factor)


def yarn_correction_range(rope: RopeConfig, base: RopeBase) -> tuple[float, float]:
    """Pair indices (low, high): pairs <= low keep their frequency, pairs >= high are divided by s.

    corr_dim(r) is the pair that turns r times within the original length; low = corr_dim(beta_fast),
    high = corr_dim(beta_slow), rounded outwards unless ``truncate`` is false, clipped to [0, dim - 1].
    """
    length = original_length(rope, base)

    def corr_dim(rotations: float) -> float:
        return base.dim * math.log(length / (rotations * 2 * math.pi)) / (2 * math.log(base.theta))

    low = corr_dim(rope.beta_fast or YARN_BETA_FAST)
    high = corr_dim(rope.beta_slow or YARN_BETA_SLOW)
    if rope.truncate is None or rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, base.dim - 1)


def _yarn(rope: RopeConfig, base: RopeBase) -> Scaling:
    low, high = yarn_correction_range(rope, base)
    if low == high:
        high += 0.001  # transformers' guard against a zero-width ramp
    ramp = np.clip((np.arange(base.dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    keep = 1.0 - ramp  # 1: pair extrapolated (original frequency), 0: interpolated (divided by s)
    extra = _default_inv_freq(base.dim, base.theta)
    inter = extra / rope.factor
    return Scaling(inter * (1.0 - keep) + extra * keep, yarn_attention_factor(rope))


def ntk_theta(rope: RopeConfig, base: RopeBase) -> float:
    """Static NTK-aware base: theta * s^(dim / (dim - 2))."""
    return base.theta * rope.factor ** (base.dim / (base.dim - 2))


def dynamic_ntk_theta(rope: RopeConfig, base: RopeBase, seq_len: int | None) -> float:
    """Dynamic NTK base at the current length: theta * (s * seq / L - (s - 1))^(dim / (dim - 2)),
    seq = max(seq_len, L); equals theta up to the original length L."""
    length = original_length(rope, base)
    seq = max(seq_len or length, length)
    return base.theta * (rope.factor * seq / length - (rope.factor - 1)) ** (base.dim / (base.dim - 2))


def _llama3(rope: RopeConfig, base: RopeBase) -> Scaling:
    inv = _default_inv_freq(base.dim, base.theta)
    low_factor = rope.low_freq_factor or LLAMA3_LOW_FREQ_FACTOR
    high_factor = rope.high_freq_factor or LLAMA3_HIGH_FREQ_FACTOR
    length = original_length(rope, base)
    wavelen = 2 * math.pi / inv
    smooth = (length / wavelen - low_factor) / (high_factor - low_factor)
    out = np.where(wavelen > length / low_factor, inv / rope.factor, inv)
    medium = (wavelen >= length / high_factor) & (wavelen <= length / low_factor)
    return Scaling(np.where(medium, (1 - smooth) * inv / rope.factor + smooth * inv, out), 1.0)


def longrope_attention_factor(rope: RopeConfig, base: RopeBase) -> float:
    """Explicit ``attention_factor``, else sqrt(1 + ln s / ln L) (Phi-3), 1 when s <= 1."""
    if rope.attention_factor is not None:
        return rope.attention_factor
    factor = rope.factor or 1.0
    if factor <= 1:
        return 1.0
    return math.sqrt(1 + math.log(factor) / math.log(original_length(rope, base)))


def check_fits(rope: RopeConfig, base: RopeBase) -> None:
    """Errors a scaling can only show against the model: per-pair factor lists of the wrong length."""
    if base.dim < 4 or base.dim % 2:
        raise ValueError(f"rotary dimension must be even and >= 4, got {base.dim}")
    for name in ("long_factor", "short_factor"):
        values = getattr(rope, name)
        if values is not None and len(values) != base.dim // 2:
            n, pairs, dim = len(values), base.dim // 2, base.dim
            raise ValueError(f"{name} has {n} entries; this model has {pairs} rotary pairs (dim {dim})")


def compute(rope: RopeConfig, base: RopeBase, seq_len: int | None = None) -> Scaling:
    """``(inv_freq, attention_factor)`` of a scaling for a model; ``seq_len`` matters only to
    ``dynamic`` (the current length) and ``longrope`` (long factors beyond the original length)."""
    check_fits(rope, base)
    kind = rope.rope_type
    if kind == "default":
        return Scaling(_default_inv_freq(base.dim, base.theta), 1.0)
    if kind == "linear":
        return Scaling(_default_inv_freq(base.dim, base.theta) / rope.factor, 1.0)
    if kind == "ntk":
        return Scaling(_default_inv_freq(base.dim, ntk_theta(rope, base)), 1.0)
    if kind == "dynamic":
        return Scaling(_default_inv_freq(base.dim, dynamic_ntk_theta(rope, base, seq_len)), 1.0)
    if kind == "yarn":
        return _yarn(rope, base)
    if kind == "llama3":
        return _llama3(rope, base)
    if kind == "longrope":
        long = seq_len is not None and seq_len > original_length(rope, base)
        ext = np.asarray(rope.long_factor if long else rope.short_factor, dtype=np.float64)
        return Scaling(_default_inv_freq(base.dim, base.theta) / ext, longrope_attention_factor(rope, base))
    raise ValueError(f"unknown rope_type {kind!r}")
