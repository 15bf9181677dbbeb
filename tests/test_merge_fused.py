"""The fused kernels against the torch form of every merge they take, bit for bit.

``methods.py`` runs the kernels for bf16 and float32 inputs; its torch form (float16, float64,
Breadcrumbs) is the readable statement of the math, tested against mergekit. Here both run on
the same inputs, with many ties at the TIES cut, and must give the same bytes; so must the
kernels with one thread and with every thread.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
import torch

from nexus_ray.merge import fused, methods

W = [1.0, 0.6, -0.4]
D = [0.5, 0.3, 0.8]


def _inputs(dtype, shape=(96, 80), ties=False):
    g = torch.Generator().manual_seed(7)
    base = torch.randn(shape, generator=g)
    models = [base + 0.05 * torch.randn(shape, generator=g) for _ in range(3)]
    if ties:  # deltas on a coarse grid: many equal magnitudes, also at the cut
        models = [base + (m - base).mul(40).round().div(40) for m in models]
    return base.to(dtype), [m.to(dtype) for m in models]


CASES = {
    "ties": lambda b, ms: methods.ties(b, ms, W, D),
    "ties_rescaled_lambda": lambda b, ms: methods.ties(b, ms, W, D, rescale=True, lambda_=1.3),
    "ties_raw": lambda b, ms: methods.ties(b, ms, W, D, normalize=False),
    "task_arithmetic": lambda b, ms: methods.task_arithmetic(b, ms, W, lambda_=0.7),
    "dare_ties": lambda b, ms: methods.dare_ties(b, ms, W, D, seed=1, tensor_name="t"),
    "dare_linear": lambda b, ms: methods.dare_linear(b, ms, W, D, seed=2, tensor_name="t"),
    "della": lambda b, ms: methods.della(b, ms, W, D, [0.1, 0.2, 0.15], seed=3, tensor_name="t"),
    "della_linear": lambda b, ms: methods.della_linear(b, ms, W, D, seed=3, tensor_name="t"),
    "linear": lambda b, ms: methods.linear(None, ms, W),
    "linear_raw": lambda b, ms: methods.linear(None, ms, W, normalize=False),
}


def _torch_form(monkeypatch, fn, *args):
    with monkeypatch.context() as m:
        m.setattr(fused, "takes", lambda *a, **k: False)
        return fn(*args)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(CASES))
def test_kernels_equal_the_torch_form(monkeypatch, name, dtype, ties):
    base, models = _inputs(dtype, ties=ties)
    got = CASES[name](base, models)
    want = _torch_form(monkeypatch, CASES[name], base, models)
    assert got.dtype == want.dtype == dtype and got.shape == want.shape
    assert torch.equal(got, want), int((got != want).sum())
    assert not torch.equal(got, base)


def test_results_do_not_depend_on_the_thread_count():
    base, models = _inputs(torch.bfloat16, shape=(300, 700), ties=True)  # 13 blocks
    merged = {}
    for threads in (1, numba.config.NUMBA_NUM_THREADS):
        numba.set_num_threads(threads)
        try:
            merged[threads] = [CASES[n](base, models) for n in ("ties", "dare_ties", "della")]
        finally:
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    one, every = merged.values()
    assert all(torch.equal(a, b) for a, b in zip(one, every))


def test_magnitude_cut_keeps_exactly_k_with_ties_in_index_order():
    base = np.zeros(fused.BLOCK * 3, np.float32)
    model = np.tile(np.array([1, 2, 2, 3], np.float32), fused.BLOCK * 3 // 4)  # 3/8 of them are 2s
    n = model.size
    k = n // 2  # every 3, then the first 2s in index order
    cut, keep_ties, tie_before = fused.magnitude_cut(base, model, False, n - k)
    assert cut == np.float32(2).view(np.uint32) and keep_ties == k - n // 4
    assert list(tie_before) == [0, fused.BLOCK // 2, fused.BLOCK]
    out = methods.ties(torch.from_numpy(base), [torch.from_numpy(model)], [1.0], [k / n])
    kept = out.numpy() != 0
    assert kept.sum() == k and kept[model == 3].all()
    twos = np.flatnonzero(model == 2)
    assert kept[twos[:keep_ties]].all() and not kept[twos[keep_ties:]].any()


def test_non_finite_inputs_are_found():
    a = np.ones(fused.BLOCK + 5, np.float32)
    assert fused.all_finite(a, False)
    a[-1] = np.inf
    assert not fused.all_finite(a, False)
    b = torch.ones(50, dtype=torch.bfloat16)
    b[3] = float("nan")
    assert not fused.all_finite(fused.as_array(b), True)


def test_uniform_stream_is_reproducible_and_uniform():
    u = fused.uniforms(np.uint64(12345), 200_000)
    assert np.array_equal(u, fused.uniforms(np.uint64(12345), 200_000))
    assert not np.array_equal(u, fused.uniforms(np.uint64(12346), 200_000))
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.005
    assert abs((u < 0.3).mean() - 0.3) < 0.005
