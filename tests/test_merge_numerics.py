"""Every merge method against a float64 reference on the parity checkpoints (a few of their
tensors), float32 and bf16 inputs: within float rounding of the reference, and no less accurate
than mergekit 0.1.5 (when .venv-mergekit is installed). ``benchmarks/merge_numerics.py`` prints
the same comparison over every tensor."""

from __future__ import annotations

import math

import pytest
import torch

from nexus_ray.merge import methods
from tests.merge_oracle import numerics
from tests.merge_oracle.oracle import mergekit_python

TENSORS = (
    "model.embed_tokens.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.mlp.down_proj.weight",
)
TESTED = ("float32", "bfloat16")


@pytest.fixture(scope="module")
def tensors():
    every = numerics.checkpoint_tensors()
    return {name: every[name] for name in TENSORS}


@pytest.fixture(scope="module")
def ours_only(tensors):
    return numerics.errors(tensors, list(numerics.PARAMS), None)


@pytest.fixture(scope="module")
def both(tensors, tmp_path_factory):
    mergekit_python()  # a skip without .venv-mergekit (a failure under NEXUS_REQUIRE_MERGEKIT)
    return numerics.errors(tensors, list(numerics.PARAMS), tmp_path_factory.mktemp("numerics"))


def test_every_registered_method_is_compared():
    assert set(numerics.PARAMS) == set(methods.METHODS)


@pytest.mark.parametrize("dtype", TESTED)
@pytest.mark.parametrize("method", list(numerics.PARAMS))
def test_error_against_float64_is_rounding(ours_only, method, dtype):
    """At most one rounding's worth: eps of the dtype at the reference's scale."""
    err = ours_only[(method, dtype, "nexus_ray")]
    eps = torch.finfo(numerics.DTYPES[dtype]).eps
    assert err.max_abs <= eps * err.ref_max, (err.max_abs, err.ref_max)
    assert err.mean_abs <= eps * err.ref_mean, (err.mean_abs, err.ref_mean)


@pytest.mark.parametrize("dtype", TESTED)
@pytest.mark.parametrize("method", list(numerics.PARAMS))
def test_no_less_accurate_than_mergekit(both, method, dtype):
    """Mean error <= mergekit's; max error too, up to a hundredth of a rounding (float32 DELLA's
    maxima are both one half-ulp at 1.0 plus rounding noise: 6.01e-8 vs 5.91e-8 on these tensors)."""
    ours, theirs = both[(method, dtype, "nexus_ray")], both[(method, dtype, "mergekit")]
    slack = 0.01 * torch.finfo(numerics.DTYPES[dtype]).eps * ours.ref_max
    assert ours.max_abs <= theirs.max_abs + slack and ours.mean_abs <= theirs.mean_abs, (ours, theirs)


@pytest.mark.parametrize("method", list(numerics.PARAMS))
def test_reference_is_mergekits_math(both, method):
    """mergekit on float64 inputs agrees with the float64 reference (nexus_ray's, float64)."""
    err = both[(method, "float64", "mergekit")]
    assert err.max_abs <= 1e-6 * err.ref_max, err


def test_slerp_on_a_large_tensor_is_float64_accurate():
    """2M elements: the angle comes from float64 dot products (a float32 one was 23x mergekit's
    error on an 8M-element embedding), so the result is within one float32 rounding."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(1024, 2048, generator=g) + 0.1
    b = 0.8 * a + 0.6 * torch.randn(1024, 2048, generator=g)
    x, y = a.double().flatten(), b.double().flatten()
    theta = math.acos(float(x @ y) / float(x.norm() * y.norm()))
    t = 0.4
    ref = (math.sin((1 - t) * theta) * x + math.sin(t * theta) * y) / math.sin(theta)
    got = methods.slerp(a, [b], t=t).double().flatten()
    assert float((got - ref).abs().max()) <= torch.finfo(torch.float32).eps * float(ref.abs().max())
