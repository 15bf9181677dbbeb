"""Sparsifiers of a task vector (a fine-tune's delta from its base), mergekit's four kinds.

Each takes a delta and returns the kept (possibly L1-rescaled) delta, in place where it can:

- ``magnitude`` (TIES): the ``density`` largest magnitudes, found with a selection (O(n));
- ``magnitude_outliers`` (Model Breadcrumbs): drop the largest ``gamma`` and the smallest;
- ``random`` (DARE): each element kept with probability ``density``;
- ``della_magprune`` (DELLA): a keep probability that rises with the magnitude rank.

Random masks draw from a counter-based stream per (seed, tensor, model) (``stream_key``,
``fused.uniforms``), the same draws as the fused kernels', so a merge is reproducible and
independent of the order, the threads and the workers that compute it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from nexus_ray.merge.fused import uniforms

EPS_NORM = 1e-7  # below this L1 norm a sparsified delta is not rescaled


def stream_key(seed: int, tensor_name: str, model_index: int) -> int:
    """The random stream of one model's mask of one tensor, independent of processing order."""
    digest = hashlib.blake2b(f"{seed}/{tensor_name}/{model_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _uniforms(key: int, shape: torch.Size) -> Tensor:
    return torch.from_numpy(uniforms(np.uint64(key), int(np.prod(shape, dtype=np.int64)))).reshape(shape)


def _l1_rescaled(delta: Tensor, kept: Tensor) -> Tensor:
    """``kept`` scaled so its L1 norm equals the original's (DARE/DELLA's rescale in mergekit).

    The norms are numpy's single-threaded pairwise sums in float64, so the factor does not depend
    on the thread count (a Ray worker runs one thread) and is exact to float32 rounding: the same
    seed gives the same bytes everywhere.
    """
    before, after = _l1(delta), _l1(kept)
    if before < EPS_NORM or after < EPS_NORM:
        return kept
    return kept.copy_(kept.double().mul_(before / after))  # one rounding of the exact product


def _l1(t: Tensor) -> float:
    return float(np.abs(t.reshape(-1).numpy()).sum(dtype=np.float64))


def _kth_smallest(flat: Tensor, k: int) -> Tensor:
    """The value of 0-based ascending rank ``k``: numpy's introselect, O(n) and about twice as
    fast as ``torch.kthvalue`` on CPU."""
    return torch.as_tensor(np.partition(flat.numpy(), k)[k])


def keep_ranks(magnitude: Tensor, lo: int, hi: int) -> Tensor:
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
    return _masked(delta, keep_ranks(delta.abs(), n - k, n), rescale)


def trim_outliers(delta: Tensor, density: float, gamma: float, rescale: bool = False) -> Tensor:
    """Model Breadcrumbs: drop the ``gamma`` fraction of largest magnitudes and enough of the
    smallest to keep ``int(density * n)``; the outlier cut shrinks if both do not fit."""
    if density >= 1:
        return delta
    n = delta.numel()
    keep_n = int(density * n)
    low = max(0, n - keep_n - int(gamma * n))
    return _masked(delta, keep_ranks(delta.abs(), low, low + keep_n), rescale)


def drop_random(delta: Tensor, density: float, rescale: bool, key: int) -> Tensor:
    """DARE: keep each element with probability ``density``; L1-rescale the survivors."""
    if density >= 1:
        return delta
    keep = _uniforms(key, delta.shape) < density
    kept = delta * keep
    return _l1_rescaled(delta, kept) if rescale else kept


def magprune(delta: Tensor, density: float, epsilon: float, rescale: bool, key: int) -> Tensor:
    """DELLA MagPrune: per row, keep probability rises linearly with magnitude rank from
    ``density - epsilon`` (smallest) to ``density + epsilon`` (largest); L1-rescale over the tensor."""
    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    if density - epsilon <= 0 or density + epsilon >= 1:
        raise ValueError(
            f"della needs 0 < density - epsilon and density + epsilon < 1 (got {density}, {epsilon})"
        )
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta.reshape(delta.shape[0], -1)
    width = rows.shape[1]
    order = rows.abs().argsort(dim=1, stable=True)  # ties by index, as the fused kernel ranks them
    ranks = torch.empty_like(rows)  # 0-based ascending rank; mergekit's (r - min)/(max - min)
    ranks.scatter_(1, order, torch.arange(width, dtype=rows.dtype).expand_as(rows).contiguous())
    unit = ranks.div_(max(1, width - 1)).clamp_(0, 1)
    probs = unit.mul_(2 * epsilon).add_(density - epsilon)
    keep = _uniforms(key, rows.shape) < probs
    kept = (rows * keep).reshape(delta.shape)
    return _l1_rescaled(delta, kept) if rescale else kept


@dataclass(frozen=True)
class Sparsifier:
    """One kind of sparsification: its function, its per-model parameters, its randomness."""

    fn: Callable[..., Tensor]  # fn(delta, **params, rescale=..., [key=...]) -> the kept delta
    params: dict[str, float]  # per-model parameters besides the weight, with mergekit's defaults
    random: bool  # takes a stream key (``stream_key``)


SPARSIFIERS: dict[str, Sparsifier] = {
    "magnitude": Sparsifier(trim_magnitude, {"density": 1.0}, random=False),
    "magnitude_outliers": Sparsifier(trim_outliers, {"density": 1.0, "gamma": 0.01}, random=False),
    "random": Sparsifier(drop_random, {"density": 1.0}, random=True),
    "della_magprune": Sparsifier(magprune, {"density": 1.0, "epsilon": 0.15}, random=True),
}
