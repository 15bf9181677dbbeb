"""Merge methods over tensors: model soups, task arithmetic, TIES, DARE, DELLA, Breadcrumbs, SLERP.

Each method is a small function registered with its parameters and their defaults, which are
mergekit's (0.1.5), so a mergekit YAML merges to the same numbers. The math is re-derived from
a description of mergekit's behaviour (mergekit is LGPL; none of its code is copied) and
tested against mergekit itself.

Arithmetic runs in float32 (float64 inputs stay float64) and the result is cast back to the
base's dtype. Differences from mergekit that change no result:

- the TIES / Breadcrumbs trim finds its cut with a selection (O(n)) instead of a full argsort;
- deltas are weighted and reduced one model at a time, never stacked into one [n, ...] tensor;
- random masks (DARE, DELLA) come from a generator seeded per (seed, tensor, model), so a merge
  is reproducible and independent of the order in which workers process tensors.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

EPS_NORM = 1e-7  # below this L1 norm a sparsified delta is not rescaled
EPS_WEIGHT_SUM = 1e-8  # |sum of weights| below this divides by 1
SLERP_DOT_THRESHOLD = 0.9995  # nearly colinear tensors are interpolated linearly


@dataclass(frozen=True)
class Method:
    """A registered merge method: its function and the parameters a config may set."""

    name: str
    fn: Callable[..., Tensor]
    needs_base: bool
    model_params: dict[str, float | None]  # per model; None = required
    global_params: dict[str, Any] = field(default_factory=dict)  # None = required
    random: bool = False


METHODS: dict[str, Method] = {}


def register(name: str, needs_base: bool, model_params: dict, global_params: dict, random: bool = False):
    def wrap(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        METHODS[name] = Method(name, fn, needs_base, model_params, global_params, random)
        return fn

    return wrap


def get(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown merge_method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def _work_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def tensor_generator(seed: int, tensor_name: str, model_index: int) -> torch.Generator:
    """A CPU generator for one model's mask of one tensor, independent of processing order."""
    digest = hashlib.blake2b(f"{seed}/{tensor_name}/{model_index}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


# --- sparsifiers: each takes a delta and returns the kept (possibly rescaled) delta -------------


def _l1_rescaled(delta: Tensor, kept: Tensor) -> Tensor:
    """``kept`` scaled so its L1 norm equals the original's (DARE/DELLA's rescale in mergekit).

    The norms are numpy's single-threaded pairwise sums, so the factor does not depend on the
    thread count (a Ray worker runs one thread): the same seed gives the same bytes everywhere.
    """
    before, after = _l1(delta), _l1(kept)
    if before < EPS_NORM or after < EPS_NORM:
        return kept
    return kept.mul_(before / after)


def _l1(t: Tensor) -> float:
    return float(np.abs(t.reshape(-1).numpy()).sum(dtype=np.float64 if t.dtype == torch.float64 else np.float32))


def _kth_smallest(flat: Tensor, k: int) -> Tensor:
    """The value of 0-based ascending rank ``k``: numpy's introselect, O(n) and about twice as
    fast as ``torch.kthvalue`` on CPU."""
    return torch.as_tensor(np.partition(flat.numpy(), k)[k])


def _keep_ranks(magnitude: Tensor, lo: int, hi: int) -> Tensor:
    """Mask of the elements whose ascending-magnitude rank is in [lo, hi), in O(n).

    A selection finds each cut value instead of a sort; of the elements equal to a cut value
    (common in bf16), the first in index order are kept, exactly ``hi - lo`` in all (a sort
    would break such ties arbitrarily).
    """
    flat = magnitude.reshape(-1)
    n = flat.numel()
    if hi < n:  # keep ranks < hi: values below the cut, then the first ties up to hi
        t = _kth_smallest(flat, hi)
        keep = flat < t
        _add_ties(keep, flat, t, hi - _count(keep), first=True)
    else:
        keep = torch.ones(n, dtype=torch.bool)
    if lo > 0:  # drop ranks < lo: values below the cut, then the last ties up to lo
        t = _kth_smallest(flat, lo)
        low = flat < t
        _add_ties(low, flat, t, lo - _count(low), first=False)
        keep &= ~low
        if hi < n and _count(keep) != hi - lo:  # both cuts in one tie group: keep its earliest
            at = (flat == t).nonzero().squeeze(1)
            keep[at] = False
            keep[at[: hi - lo - _count(keep)]] = True
    return keep.reshape(magnitude.shape)


def _count(mask: Tensor) -> int:
    return int(np.count_nonzero(mask.numpy()))  # several times faster than a torch bool sum


def _add_ties(mask: Tensor, flat: Tensor, t: Tensor, count: int, first: bool) -> None:
    """Set ``mask`` on the first (or last) ``count`` elements equal to ``t``."""
    if count > 0:
        at = (flat == t).nonzero().squeeze(1)
        mask[at[:count] if first else at[-count:]] = True


def _masked(delta: Tensor, keep: Tensor, rescale: bool) -> Tensor:
    """``delta`` where ``keep``, in place unless the L1 rescale needs the original."""
    return _l1_rescaled(delta, delta * keep) if rescale else delta.mul_(keep)


def trim_magnitude(delta: Tensor, density: float, rescale: bool = False) -> Tensor:
    """TIES trim: keep the ``max(1, int(density * n))`` largest magnitudes of this tensor."""
    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    n = delta.numel()
    k = max(1, int(density * n))
    return _masked(delta, _keep_ranks(delta.abs(), n - k, n), rescale)


def trim_outliers(delta: Tensor, density: float, gamma: float, rescale: bool = False) -> Tensor:
    """Model Breadcrumbs: drop the ``gamma`` fraction of largest magnitudes and enough of the
    smallest to keep ``int(density * n)``; the outlier cut shrinks if both do not fit."""
    if density >= 1:
        return delta
    n = delta.numel()
    keep_n = int(density * n)
    low = max(0, n - keep_n - int(gamma * n))
    return _masked(delta, _keep_ranks(delta.abs(), low, low + keep_n), rescale)


def drop_random(delta: Tensor, density: float, rescale: bool, gen: torch.Generator) -> Tensor:
    """DARE: keep each element with probability ``density``; L1-rescale the survivors."""
    if density >= 1:
        return delta
    keep = torch.rand(delta.shape, generator=gen, dtype=delta.dtype) < density
    kept = delta * keep
    return _l1_rescaled(delta, kept) if rescale else kept


def magprune(delta: Tensor, density: float, epsilon: float, rescale: bool, gen: torch.Generator) -> Tensor:
    """DELLA MagPrune: per row, keep probability rises linearly with magnitude rank from
    ``density - epsilon`` (smallest) to ``density + epsilon`` (largest); L1-rescale over the tensor."""
    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    if density - epsilon <= 0 or density + epsilon >= 1:
        raise ValueError(f"della needs 0 < density - epsilon and density + epsilon < 1 (got {density}, {epsilon})")
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta.reshape(delta.shape[0], -1)
    width = rows.shape[1]
    order = rows.abs().argsort(dim=1)
    ranks = torch.empty_like(rows)  # 0-based ascending rank; mergekit's (r - min)/(max - min)
    ranks.scatter_(1, order, torch.arange(width, dtype=rows.dtype).expand_as(rows).contiguous())
    unit = ranks.div_(max(1, width - 1)).clamp_(0, 1)
    probs = unit.mul_(2 * epsilon).add_(density - epsilon)
    keep = torch.rand(rows.shape, generator=gen, dtype=rows.dtype) < probs
    kept = (rows * keep).reshape(delta.shape)
    return _l1_rescaled(delta, kept) if rescale else kept


# --- the generalized task-arithmetic family --------------------------------------------------


def _task_merge(
    base: Tensor,
    models: Sequence[Tensor],
    weight: Sequence[float],
    sparsify: Callable[[Tensor, int], Tensor] | None,
    consensus: bool,
    normalize: bool,
    lambda_: float,
) -> Tensor:
    """base + lambda * (sum of weighted, sparsified task vectors) [/ their weight].

    With ``consensus`` (TIES sign election), each element keeps only the weighted deltas whose
    sign agrees with the sign of their sum (zero sum -> +); the divisor is then the sum of the
    agreeing weights (0 -> 1), a weighted disjoint mean.
    """
    dtype = _work_dtype(base)
    b = base.to(dtype)
    deltas = []
    for i, m in enumerate(models):
        d = m.to(dtype) - b
        if sparsify is not None:
            d = sparsify(d, i)
        deltas.append(d.mul_(weight[i]))
    if consensus:
        total = torch.zeros_like(b)
        for d in deltas:
            total += d
        positive = total >= 0
        mixed, divisor = total.zero_(), torch.zeros_like(b)
        for d, w in zip(deltas, weight):
            agree = torch.where(positive, d > 0, d < 0)
            mixed += d.mul_(agree)
            divisor += agree * w
        divisor[divisor == 0] = 1
    else:
        mixed = deltas[0]
        for d in deltas[1:]:
            mixed += d
        divisor = float(sum(weight))
        if abs(divisor) < EPS_WEIGHT_SUM:
            divisor = 1.0
    if normalize:
        mixed /= divisor
    if lambda_ != 1:
        mixed *= lambda_
    return (b + mixed).to(base.dtype)


def _density(density: Sequence[float] | None, n: int) -> Sequence[float]:
    return density if density is not None else [1.0] * n


GTA_GLOBALS = {"normalize": False, "rescale": False, "lambda": 1.0, "int8_mask": False}


@register("task_arithmetic", True, {"weight": None}, GTA_GLOBALS)
def task_arithmetic(
    base: Tensor,
    models: Sequence[Tensor],
    weight: Sequence[float],
    *,
    normalize: bool = False,
    rescale: bool = False,
    lambda_: float = 1.0,
) -> Tensor:
    """Task arithmetic: base + lambda * sum_i w_i (theta_i - base); ``rescale`` is accepted for
    mergekit configs and changes nothing (no element is dropped)."""
    return _task_merge(base, models, weight, None, False, normalize, lambda_)


@register("ties", True, {"weight": None, "density": 1.0}, {**GTA_GLOBALS, "normalize": True})
def ties(
    base: Tensor,
    models: Sequence[Tensor],
    weight: Sequence[float],
    density: Sequence[float] | None = None,
    *,
    normalize: bool = True,
    rescale: bool = False,
    lambda_: float = 1.0,
) -> Tensor:
    """TIES: trim each task vector to its top-``density`` magnitudes, elect signs, disjoint mean."""
    dens = _density(density, len(models))
    return _task_merge(base, models, weight, lambda d, i: trim_magnitude(d, dens[i], rescale), True, normalize, lambda_)


def _dare(base, models, weight, density, normalize, rescale, lambda_, seed, tensor_name, consensus) -> Tensor:
    dens = _density(density, len(models))

    def sparsify(d: Tensor, i: int) -> Tensor:
        return drop_random(d, dens[i], rescale, tensor_generator(seed, tensor_name, i))

    return _task_merge(base, models, weight, sparsify, consensus, normalize, lambda_)


@register("dare_linear", True, {"weight": None, "density": 1.0}, {**GTA_GLOBALS, "rescale": True}, random=True)
def dare_linear(
    base: Tensor,
    models: Sequence[Tensor],
    weight: Sequence[float],
    density: Sequence[float] | None = None,
    *,
    normalize: bool = False,
    rescale: bool = True,
    lambda_: float = 1.0,
    seed: int = 0,
    tensor_name: str = "",
) -> Tensor:
    """DARE + task arithmetic: drop each delta element with probability 1 - density."""
    return _dare(base, models, weight, density, normalize, rescale, lambda_, seed, tensor_name, False)


@register("dare_ties", True, {"weight": None, "density": 1.0}, {**GTA_GLOBALS, "rescale": True}, random=True)
def dare_ties(
    base: Tensor,
    models: Sequence[Tensor],
    weight: Sequence[float],
    density: Sequence[float] | None = None,
    *,
    normalize: bool = False,
    rescale: bool = True,
    lambda_: float = 1.0,
    seed: int = 0,
    tensor_name: str = "",
) -> Tensor:
    """DARE sparsification with the TIES sign election."""
    return _dare(base, models, weight, density, normalize, rescale, lambda_, seed, tensor_name, True)


def _della(base, models, weight, density, epsilon, normalize, rescale, lambda_, seed, tensor_name, consensus):
    dens = _density(density, len(models))
    eps = epsilon if epsilon is not None else [0.15] * len(models)

    def sparsify(d: Tensor, i: int) -> Tensor:
        return magprune(d, dens[i], eps[i], rescale, tensor_generator(seed, tensor_name, i))

    return _task_merge(base, models, weight, sparsify, consensus, normalize, lambda_)


DELLA_MODEL = {"weight": None, "density": 1.0, "epsilon": 0.15}


@register("della", True, DELLA_MODEL, {**GTA_GLOBALS, "normalize": True, "rescale": True}, random=True)
def della(
    base: Tensor,
    models: Sequence[Tensor],
    weight: Sequence[float],
    density: Sequence[float] | None = None,
    epsilon: Sequence[float] | None = None,
    *,
    normalize: bool = True,
    rescale: bool = True,
    lambda_: float = 1.0,
    seed: int = 0,
    tensor_name: str = "",
) -> Tensor:
    """DELLA: magnitude-ranked random pruning (MagPrune), sign election, disjoint mean."""
    return _della(base, models, weight, density, epsilon, normalize, rescale, lambda_, seed, tensor_name, True)


@register("della_linear", True, DELLA_MODEL, {**GTA_GLOBALS, "rescale": True}, random=True)
def della_linear(
    base: Tensor,
    models: Sequence[Tensor],
    weight: Sequence[float],
    density: Sequence[float] | None = None,
    epsilon: Sequence[float] | None = None,
    *,
    normalize: bool = False,
    rescale: bool = True,
    lambda_: float = 1.0,
    seed: int = 0,
    tensor_name: str = "",
) -> Tensor:
    """DELLA's MagPrune without sign election (plain sum of the pruned task vectors)."""
    return _della(base, models, weight, density, epsilon, normalize, rescale, lambda_, seed, tensor_name, False)


BREADCRUMBS_MODEL = {"weight": None, "density": 1.0, "gamma": 0.01}


def _breadcrumbs(base, models, weight, density, gamma, normalize, rescale, lambda_, consensus):
    dens = _density(density, len(models))
    gam = gamma if gamma is not None else [0.01] * len(models)
    return _task_merge(
        base, models, weight, lambda d, i: trim_outliers(d, dens[i], gam[i], rescale), consensus, normalize, lambda_
    )


@register("breadcrumbs", True, BREADCRUMBS_MODEL, GTA_GLOBALS)
def breadcrumbs(
    base: Tensor,
    models: Sequence[Tensor],
    weight: Sequence[float],
    density: Sequence[float] | None = None,
    gamma: Sequence[float] | None = None,
    *,
    normalize: bool = False,
    rescale: bool = False,
    lambda_: float = 1.0,
) -> Tensor:
    """Model Breadcrumbs: drop the tiny and the outlier deltas, then task arithmetic."""
    return _breadcrumbs(base, models, weight, density, gamma, normalize, rescale, lambda_, False)


@register("breadcrumbs_ties", True, BREADCRUMBS_MODEL, GTA_GLOBALS)
def breadcrumbs_ties(
    base: Tensor,
    models: Sequence[Tensor],
    weight: Sequence[float],
    density: Sequence[float] | None = None,
    gamma: Sequence[float] | None = None,
    *,
    normalize: bool = False,
    rescale: bool = False,
    lambda_: float = 1.0,
) -> Tensor:
    """Model Breadcrumbs with the TIES sign election."""
    return _breadcrumbs(base, models, weight, density, gamma, normalize, rescale, lambda_, True)


# --- methods that average weights directly ---------------------------------------------------


@register("linear", False, {"weight": None}, {"normalize": True})
def linear(base: Tensor | None, models: Sequence[Tensor], weight: Sequence[float], *, normalize: bool = True) -> Tensor:
    """Model soup: sum_i w_i theta_i, divided by sum_i w_i when ``normalize``."""
    dtype = _work_dtype(models[0])
    out = torch.zeros(models[0].shape, dtype=dtype)
    for m, w in zip(models, weight):
        out.add_(m.to(dtype), alpha=w)
    if normalize:
        out.div_(float(sum(weight)))
    return out.to(models[0].dtype)


@register("slerp", True, {}, {"t": None})
def slerp(base: Tensor, models: Sequence[Tensor], *, t: float) -> Tensor:
    """Spherical interpolation from ``base`` (t = 0) to the one other model (t = 1), over the
    whole flattened tensor; nearly colinear pairs fall back to linear interpolation."""
    if len(models) != 1:
        raise ValueError(f"slerp merges the base with exactly one other model, got {len(models)}")
    dtype = _work_dtype(base)
    a, b = base.to(dtype).reshape(-1), models[0].to(dtype).reshape(-1)
    na, nb = a.norm(), b.norm()
    dot = float(((a / na) @ (b / nb)).clamp(-1, 1)) if na > 0 and nb > 0 else 1.0
    if abs(dot) > SLERP_DOT_THRESHOLD:
        ca, cb = 1 - t, t
    else:
        theta = math.acos(dot)
        ca, cb = math.sin((1 - t) * theta) / math.sin(theta), math.sin(t * theta) / math.sin(theta)
    return (a * ca + b * cb).reshape(base.shape).to(base.dtype)


def call(
    method: Method,
    base: Tensor | None,
    models: Sequence[Tensor],
    model_params: dict[str, list[float]],
    global_params: dict[str, Any],
    seed: int = 0,
    tensor_name: str = "",
) -> Tensor:
    """Run ``method`` with parameters as the plan resolved them (config key names)."""
    kwargs: dict[str, Any] = {k: v for k, v in model_params.items() if k in method.model_params}
    for key, value in global_params.items():
        if key == "int8_mask":  # memory layout of mergekit's mask only; results are identical
            continue
        kwargs["lambda_" if key == "lambda" else key] = value
    if method.random:
        kwargs.update(seed=seed, tensor_name=tensor_name)
    return method.fn(base, models, **kwargs)
