"""Fused merge kernels (numba): each output block is merged in one pass over its inputs, on every core.

Why: the plain torch form of a merge makes about a dozen full-tensor float32 passes per input
(upcast, subtract, abs, compare, mask, weight, election, divisor), each through a fresh
allocation; on a large checkpoint that is memory traffic and page faults, not arithmetic. Here a
block of ``BLOCK`` elements of every input is decoded once into cache-sized buffers, merged, and
written in the output's dtype; blocks run in parallel (``numba.set_num_threads`` sets how many
threads). Inputs are bfloat16 (passed as their uint16 bits) or float32; the math is the same
float32 math as the torch form (``methods.py``), with the TIES election summed in float64.

The TIES trim's cut is found by a radix selection over the float32 bits of |delta| (two passes
of a 65536-bin histogram) instead of a sort; ties at the cut are kept in index order, as
``sparsify.keep_ranks`` keeps them. Random masks (DARE, DELLA) come from a counter-based
generator (``uniform``): the draw of element j of model i of a tensor depends on (seed, tensor,
model, j) only, so any thread or worker computes the same mask. Sums that set a result (L1 norms)
are taken per block in a fixed order, so results do not depend on the number of threads.
"""

from __future__ import annotations

import numpy as np
import torch
from llvmlite import ir
from numba import njit, prange
from numba.core import cgutils, types
from numba.extending import intrinsic

BLOCK = 1 << 14  # elements per parallel block: its buffers for a few inputs stay in L2
PARTS = 16  # histogram partitions (fixed: the counts do not depend on the thread count)
BINS = 1 << 16
GOLDEN = np.uint64(0x9E3779B97F4A7C15)

# What each model's delta keeps (``kinds``).
KEEP_ALL, KEEP_CUT, KEEP_RANDOM, KEEP_MASK = 0, 1, 2, 3


@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c rounded once (LLVM's fma), as torch's vectorized ``add_(x, alpha=w)`` computes it."""
    ty = a
    if not (a == b == c and a in (types.float32, types.float64)):
        return None

    def codegen(context, builder, signature, args):
        llty = context.get_value_type(ty)
        name = "llvm.fma.f64" if ty == types.float64 else "llvm.fma.f32"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(llty, [llty] * 3), name)
        return builder.call(fn, args)

    return ty(ty, ty, ty), codegen


@njit(inline="always")
def _decode(src, s, e, bf16, buf):
    """Elements [s, e) of ``src`` as float32 into ``buf`` (bf16 bits are the high half of a float32)."""
    if bf16:
        u = buf.view(np.uint32)
        for j in range(e - s):
            u[j] = np.uint32(src[s + j]) << np.uint32(16)
    else:
        for j in range(e - s):
            buf[j] = src[s + j]


@njit(inline="always")
def _delta(base, m, s, e, bf16, bbuf, dbuf):
    """m - base over [s, e) into ``dbuf`` as float32 (the base's block left in ``bbuf``)."""
    _decode(base, s, e, bf16, bbuf)
    _decode(m, s, e, bf16, dbuf)
    for j in range(e - s):
        dbuf[j] = dbuf[j] - bbuf[j]


@njit(inline="always")
def _encode(buf, dst, s, e, bf16):
    """``buf`` (float32) into ``dst[s:e]``: bf16 bits rounded to nearest even, as torch rounds."""
    if bf16:
        u = buf.view(np.uint32)
        for j in range(e - s):
            x = np.uint64(u[j])
            dst[s + j] = np.uint16((x + np.uint64(0x7FFF) + ((x >> np.uint64(16)) & np.uint64(1))) >> 16)
    else:
        for j in range(e - s):
            dst[s + j] = buf[j]


@njit(inline="always")
def uniform(key, j):
    """A float32 in [0, 1) for element ``j`` of the stream ``key`` (splitmix64, 24 bits)."""
    z = key + (np.uint64(j) + np.uint64(1)) * GOLDEN
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return np.float32(z >> np.uint64(40)) * np.float32(1.0 / (1 << 24))


@njit(parallel=True, cache=True)
def uniforms(key, n):
    """``uniform(key, j)`` for j < n, as an array (the torch form's masks draw these too)."""
    out = np.empty(n, np.float32)
    for j in prange(n):
        out[j] = uniform(key, j)
    return out


def _blocks(n: int) -> int:
    return (n + BLOCK - 1) // BLOCK


@njit(parallel=True, cache=True)
def all_finite(src, bf16):
    """No NaN or Inf in ``src``."""
    n = src.size
    nb = (n + BLOCK - 1) // BLOCK
    bad = np.zeros(nb, np.uint8)
    for b in prange(nb):
        s = b * BLOCK
        e = min(n, s + BLOCK)
        buf = np.empty(BLOCK, np.float32)
        _decode(src, s, e, bf16, buf)
        u = buf.view(np.uint32)
        for j in range(e - s):
            if u[j] & np.uint32(0x7F800000) == np.uint32(0x7F800000):
                bad[b] = 1
    return not bad.any()


@njit(parallel=True, cache=True)
def _abs_delta_histogram(base, m, bf16, shift, high):
    """Histogram of 16 bits of |m - base|'s float32 bits: the high half (shift 16), or the low
    half of the elements whose high half is ``high`` (shift 0)."""
    n = base.size
    nb = (n + BLOCK - 1) // BLOCK
    parts = min(PARTS, nb)
    hist = np.zeros((parts, BINS), np.int64)
    for p in prange(parts):
        bbuf = np.empty(BLOCK, np.float32)
        mbuf = np.empty(BLOCK, np.float32)
        for b in range(p * nb // parts, (p + 1) * nb // parts):
            s = b * BLOCK
            e = min(n, s + BLOCK)
            _delta(base, m, s, e, bf16, bbuf, mbuf)
            u = mbuf.view(np.uint32)
            for j in range(e - s):
                a = u[j] & np.uint32(0x7FFFFFFF)
                if shift == 16:
                    hist[p, a >> np.uint32(16)] += 1
                elif a >> np.uint32(16) == high:
                    hist[p, a & np.uint32(0xFFFF)] += 1
    return hist.sum(axis=0)


@njit(parallel=True, cache=True)
def _ties_per_block(base, m, bf16, cut):
    """How many |m - base| equal the value with float32 bits ``cut``, per block."""
    n = base.size
    nb = (n + BLOCK - 1) // BLOCK
    counts = np.zeros(nb, np.int64)
    for b in prange(nb):
        s = b * BLOCK
        e = min(n, s + BLOCK)
        bbuf = np.empty(BLOCK, np.float32)
        mbuf = np.empty(BLOCK, np.float32)
        _delta(base, m, s, e, bf16, bbuf, mbuf)
        u = mbuf.view(np.uint32)
        c = 0
        for j in range(e - s):
            if u[j] & np.uint32(0x7FFFFFFF) == cut:
                c += 1
        counts[b] = c
    return counts


def magnitude_cut(base: np.ndarray, m: np.ndarray, bf16: bool, lo: int) -> tuple[int, int, np.ndarray]:
    """Keep |m - base|'s ascending ranks >= ``lo`` (TIES's top k = n - lo), as ``keep_ranks``:
    every value above the cut value, and of the values equal to it the first ones in index order.

    Returns the cut's float32 bits, how many of its ties are kept, and per block how many ties
    come before it (for the fused pass to keep the first ones)."""
    high_hist = _abs_delta_histogram(base, m, bf16, 16, np.uint32(0))
    cum = np.cumsum(high_hist)
    high = int(np.searchsorted(cum, lo, side="right"))
    below = int(cum[high - 1]) if high > 0 else 0
    low_hist = _abs_delta_histogram(base, m, bf16, 0, np.uint32(high))
    cum_low = np.cumsum(low_hist)
    low = int(np.searchsorted(cum_low, lo - below, side="right"))
    below += int(cum_low[low - 1]) if low > 0 else 0
    ties = int(low_hist[low])
    cut = (high << 16) | low
    keep_ties = ties - (lo - below)  # ranks lo.. start inside the tie group
    if keep_ties == ties:
        return cut, keep_ties, np.zeros(_blocks(base.size), np.int64)
    per_block = _ties_per_block(base, m, bf16, np.uint32(cut))
    return cut, keep_ties, np.concatenate(([0], np.cumsum(per_block)[:-1]))


@njit(cache=True)
def _stable_order(keys, idx, keys_tmp, idx_tmp):
    """The indices of ``keys`` (uint32) in ascending order, equal keys by index: an LSD radix
    sort on bytes (a pass is skipped when every key shares its byte), into ``idx``."""
    n = keys.size
    counts = np.zeros((4, 257), np.int64)
    for j in range(n):
        k = keys[j]
        for p in range(4):
            counts[p, ((k >> np.uint32(8 * p)) & np.uint32(0xFF)) + 1] += 1
    for j in range(n):
        idx[j] = j
    for p in range(4):
        if counts[p].max() == n:
            continue
        start = np.cumsum(counts[p])
        for j in range(n):
            k = keys[j]
            digit = (k >> np.uint32(8 * p)) & np.uint32(0xFF)
            at = start[digit]
            start[digit] += 1
            keys_tmp[at] = k
            idx_tmp[at] = idx[j]
        keys[:] = keys_tmp[:n]
        idx[:] = idx_tmp[:n]


@njit(parallel=True, cache=True)
def _della_mask(base, m, bf16, width, density, epsilon, key):
    """DELLA MagPrune's keep mask: per row of ``width``, the keep probability rises linearly with
    the magnitude's rank (stable: ties by index) from density - epsilon to density + epsilon."""
    n = base.size
    rows = n // width
    mask = np.empty(n, np.uint8)
    lo = np.float32(density - epsilon)
    span = np.float32(2 * epsilon)
    denom = np.float32(max(1, width - 1))
    for r in prange(rows):
        s = r * width
        bbuf = np.empty(width, np.float32)
        mbuf = np.empty(width, np.float32)
        _delta(base, m, s, s + width, bf16, bbuf, mbuf)
        keys = mbuf.view(np.uint32)
        for j in range(width):
            keys[j] = keys[j] & np.uint32(0x7FFFFFFF)  # |d|'s bits order as |d| does
        order = np.empty(width, np.int64)
        _stable_order(keys, order, np.empty(width, np.uint32), np.empty(width, np.int64))
        for rank in range(width):
            j = order[rank]
            unit = min(np.float32(1), max(np.float32(0), np.float32(rank) / denom))
            mask[s + j] = uniform(key, s + j) < unit * span + lo
    return mask


@njit(inline="always")
def _keep(d, size, s, kind, cut, keep_ties, tie_seen, density, key, mask):
    """Zero what a delta block ``d`` (elements s..s+size) drops, in place (d * keep, as the torch
    form masks: dropped negatives become -0.0). ``tie_seen``: the cut's ties before the block."""
    if kind == KEEP_CUT:
        u = d.view(np.uint32)
        for j in range(size):
            bits = u[j] & np.uint32(0x7FFFFFFF)
            keep = bits > cut
            if bits == cut:
                keep = tie_seen < keep_ties
                tie_seen += 1
            d[j] = d[j] * np.float32(keep)
    elif kind == KEEP_RANDOM:
        for j in range(size):
            d[j] = d[j] * np.float32(uniform(key, s + j) < density)
    elif kind == KEEP_MASK:
        for j in range(size):
            d[j] = d[j] * np.float32(mask[s + j])


@njit(parallel=True, cache=True)
def l1_norms(base, m, bf16, kind, cut, keep_ties, tie_before, density, key, mask):
    """Per block, the L1 norms of the delta and of what it keeps, in float64 (summed in a fixed
    order by the caller, so the rescale factor does not depend on the thread count)."""
    n = base.size
    nb = (n + BLOCK - 1) // BLOCK
    before = np.zeros(nb, np.float64)
    after = np.zeros(nb, np.float64)
    for b in prange(nb):
        s = b * BLOCK
        e = min(n, s + BLOCK)
        bbuf = np.empty(BLOCK, np.float32)
        mbuf = np.empty(BLOCK, np.float32)
        _delta(base, m, s, e, bf16, bbuf, mbuf)
        x = 0.0
        for j in range(e - s):
            x += np.float64(abs(mbuf[j]))
        _keep(mbuf, e - s, s, kind, cut, keep_ties, tie_before[b], density, key, mask)
        y = 0.0
        for j in range(e - s):
            y += np.float64(abs(mbuf[j]))
        before[b] = x
        after[b] = y
    return before, after


@njit(inline="always")
def _finish(base, mixed, divisor, normalize, lam):
    if normalize:
        mixed = mixed / divisor
    if lam != 1:
        mixed = mixed * lam
    return base + mixed


@njit(parallel=True, cache=True)
def task_arithmetic(
    base,
    models,
    bf16_in,
    out,
    bf16_out,
    weights,
    kinds,
    cuts,
    keep_ties,
    tie_before,
    density,
    keys,
    masks,
    scales,
    consensus,
    normalize,
    divisor_all,
    lam,
):
    """base + lam * (sum_i w_i kept_i [elected]) [/ divisor], into ``out``: the float32 math of
    ``methods.generalized_task_arithmetic``, one block at a time.

    Per model i: ``kinds[i]`` says what its delta keeps (a magnitude cut ``cuts[i]`` with
    ``keep_ties[i]`` of its ties, a random draw under ``density[i]`` from stream ``keys[i]``, or
    ``masks[i]``), ``scales[i]`` rescales what is kept (DARE/DELLA's L1 factor, 1 for none).
    With ``consensus`` (TIES) the sign of sum_i w_i kept_i (float64) is elected and the divisor
    is the agreeing weights' sum (0 -> 1); otherwise it is ``divisor_all``.
    """
    n = base.size
    nm = len(models)
    nb = (n + BLOCK - 1) // BLOCK
    lam32 = np.float32(lam)
    all32 = np.float32(divisor_all)
    for b in prange(nb):
        s = b * BLOCK
        e = min(n, s + BLOCK)
        size = e - s
        bbuf = np.empty(BLOCK, np.float32)
        dbuf = np.empty(BLOCK, np.float32)
        weighted = np.empty((nm, BLOCK), np.float32)
        total = np.zeros(BLOCK, np.float64)
        _decode(base, s, e, bf16_in, bbuf)
        for i in range(nm):
            _decode(models[i], s, e, bf16_in, dbuf)
            for j in range(size):
                dbuf[j] = dbuf[j] - bbuf[j]
            _keep(
                dbuf,
                size,
                s,
                kinds[i],
                cuts[i],
                keep_ties[i],
                tie_before[i, b],
                density[i],
                keys[i],
                masks[i],
            )
            scale = scales[i]
            if scale != 1.0:
                for j in range(size):
                    dbuf[j] = np.float32(np.float64(dbuf[j]) * scale)
            w = weights[i]
            if consensus:
                for j in range(size):
                    total[j] = _fma(np.float64(dbuf[j]), w, total[j])
            w32 = np.float32(w)
            for j in range(size):
                weighted[i, j] = dbuf[j] * w32
        if consensus:
            for j in range(size):
                mixed = np.float32(0)
                divisor = np.float32(0)
                positive = total[j] >= 0
                for i in range(nm):
                    x = weighted[i, j]
                    agree = np.float32(x > 0) if positive else np.float32(x < 0)
                    mixed += x * agree
                    divisor += agree * np.float32(weights[i])
                if divisor == 0:
                    divisor = np.float32(1)
                dbuf[j] = _finish(bbuf[j], mixed, divisor, normalize, lam32)
        else:
            for j in range(size):
                mixed = weighted[0, j]
                for i in range(1, nm):
                    mixed += weighted[i, j]
                dbuf[j] = _finish(bbuf[j], mixed, all32, normalize, lam32)
        _encode(dbuf, out, s, e, bf16_out)


@njit(parallel=True, cache=True)
def linear(models, bf16_in, out, bf16_out, weights, divisor):
    """sum_i w_i m_i [/ divisor], in float32, into ``out`` (a model soup)."""
    n = models[0].size
    nm = len(models)
    nb = (n + BLOCK - 1) // BLOCK
    div32 = np.float32(divisor)
    for b in prange(nb):
        s = b * BLOCK
        e = min(n, s + BLOCK)
        acc = np.zeros(BLOCK, np.float32)
        buf = np.empty(BLOCK, np.float32)
        for i in range(nm):
            _decode(models[i], s, e, bf16_in, buf)
            w32 = np.float32(weights[i])
            for j in range(e - s):
                acc[j] = _fma(buf[j], w32, acc[j])
        if div32 != 1:
            for j in range(e - s):
                acc[j] = acc[j] / div32
        _encode(acc, out, s, e, bf16_out)


# --- from tensors: which merges the kernels take, and their arguments --------------------------

KERNEL_DTYPES = ("bfloat16", "float32")
SPARSIFIER_KINDS = {None: KEEP_ALL, "magnitude": KEEP_CUT, "random": KEEP_RANDOM, "della_magprune": KEEP_MASK}
EPS_NORM = 1e-7  # below this L1 norm a sparsified delta is not rescaled (as in sparsify)


def takes(tensors: list, sparsification: str | None = None) -> bool:
    """Whether the kernels merge these tensors: CPU, one dtype among bf16/float32, and a
    sparsifier they implement (Breadcrumbs' two cuts, float16 and float64 take the torch form)."""
    dtype = tensors[0].dtype
    return (
        sparsification in SPARSIFIER_KINDS
        and str(dtype).removeprefix("torch.") in KERNEL_DTYPES
        and all(t.dtype == dtype and t.device.type == "cpu" and t.shape == tensors[0].shape for t in tensors)
    )


def as_array(t) -> np.ndarray:
    """A tensor's elements as a flat numpy array, without a copy when contiguous (bf16 as its bits)."""
    flat = t.contiguous().reshape(-1)
    if flat.dtype == torch.bfloat16:
        return flat.view(torch.int16).numpy().view(np.uint16)
    return flat.numpy()


def as_tensor(a: np.ndarray, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """``as_array``'s inverse, without a copy."""
    t = torch.from_numpy(a)
    return (t.view(torch.bfloat16) if dtype == torch.bfloat16 else t).reshape(shape)


def _empty_like(n: int, bf16: bool) -> np.ndarray:
    return np.empty(n, np.uint16 if bf16 else np.float32)


def family(
    base: np.ndarray,
    models: list[np.ndarray],
    bf16: bool,
    weight: list[float],
    params: dict[str, list[float]],
    *,
    sparsification: str | None,
    consensus: bool,
    normalize: bool,
    rescale: bool,
    lambda_: float,
    keys: list[int],
    rows: int,
) -> np.ndarray:
    """The generalized task-arithmetic merge of flat arrays (``methods.generalized_task_arithmetic``'s
    arguments; ``keys`` are the random streams per model, ``rows`` the DELLA row count)."""
    n, nm, nb = base.size, len(models), _blocks(base.size)
    kind = SPARSIFIER_KINDS[sparsification]
    kinds = np.full(nm, KEEP_ALL, np.int64)
    cuts = np.zeros(nm, np.uint32)
    keep_ties = np.zeros(nm, np.int64)
    tie_before = np.zeros((nm, nb), np.int64)
    density = np.ones(nm, np.float32)
    masks = np.zeros((nm, 1), np.uint8)
    scales = np.ones(nm, np.float64)
    for i, m in enumerate(models):
        dens = params["density"][i] if "density" in params else 1.0
        if kind == KEEP_ALL or dens >= 1:
            continue
        kinds[i], density[i] = kind, dens
        if kind == KEEP_CUT:
            lo = n - max(1, int(dens * n))
            if lo == 0:
                kinds[i] = KEEP_ALL
                continue
            cuts[i], keep_ties[i], tie_before[i] = magnitude_cut(base, m, bf16, lo)
        elif kind == KEEP_MASK:
            if masks.shape[1] != n:
                masks = np.zeros((nm, n), np.uint8)
            masks[i] = _della_mask(base, m, bf16, n // rows, dens, params["epsilon"][i], np.uint64(keys[i]))
        if rescale:
            before, after = l1_norms(
                base, m, bf16, kinds[i], cuts[i], keep_ties[i], tie_before[i], density[i],
                np.uint64(keys[i]), masks[i],
            )  # fmt: skip
            b, a = float(before.sum()), float(after.sum())
            if b >= EPS_NORM and a >= EPS_NORM:
                scales[i] = b / a
    divisor_all = float(sum(weight))
    if abs(divisor_all) < 1e-8:
        divisor_all = 1.0
    out = _empty_like(n, bf16)
    task_arithmetic(
        base, tuple(models), bf16, out, bf16, np.asarray(weight, np.float64), kinds, cuts, keep_ties,
        tie_before, density, np.asarray(keys, np.uint64), masks, scales, consensus, normalize,
        divisor_all, float(lambda_),
    )  # fmt: skip
    return out


def soup(models: list[np.ndarray], bf16: bool, weight: list[float], normalize: bool) -> np.ndarray:
    """A model soup of flat arrays (``methods.linear``)."""
    out = _empty_like(models[0].size, bf16)
    linear(
        tuple(models),
        bf16,
        out,
        bf16,
        np.asarray(weight, np.float64),
        float(sum(weight)) if normalize else 1.0,
    )
    return out
