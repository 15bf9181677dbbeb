"""Every merge method against mergekit (the oracle, in its own venv) on the same random tensors.

Deterministic methods: the same values to float tolerance and exactly the same kept/dropped
elements. DARE/DELLA: the same keep rates and rescaling as mergekit's, and reproducible by seed.
"""

from __future__ import annotations

import pytest
import torch

from nexus_ray.merge import methods, sparsify
from tests.merge_oracle.oracle import run_cases

W = [1.0, 0.6, -0.4]
D = [0.5, 0.3, 0.8]


def _inputs(shape=(96, 80), n=3, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    models = [base + 0.05 * torch.randn(shape, generator=g) for _ in range(n)]
    return base.to(dtype), [m.to(dtype) for m in models]


def _case(method, params, base=True, n=3, shape=(96, 80), dtype=torch.float32, draws=1, seed=0):
    b, ms = _inputs(shape, n, seed=len(method) + n, dtype=dtype)
    inputs = {f"m{i}": m for i, m in enumerate(ms)}
    if base:
        inputs["base"] = b
    return inputs, {"method": method, "parameters": params, "draws": draws, "seed": seed}


DETERMINISTIC = {
    "linear": (
        _case("linear", {"weight": W[:2] + [0.9]}, base=False),
        lambda i, p: methods.linear(None, i, p["weight"]),
    ),
    "linear_raw": (
        _case("linear", {"weight": [0.3, 0.5, 0.9], "normalize": False}, base=False),
        lambda i, p: methods.linear(None, i, p["weight"], normalize=False),
    ),
    "linear_bf16": (
        _case("linear", {"weight": [0.3, 0.5, 0.9]}, base=False, dtype=torch.bfloat16),
        lambda i, p: methods.linear(None, i, p["weight"]),
    ),
    "task_arithmetic": (
        _case("task_arithmetic", {"weight": W, "lambda": 0.7}),
        lambda b, i, p: methods.task_arithmetic(b, i, p["weight"], lambda_=0.7),
    ),
    "ties": (
        _case("ties", {"weight": W, "density": D}),
        lambda b, i, p: methods.ties(b, i, p["weight"], p["density"]),
    ),
    "ties_raw_1d": (
        _case(
            "ties",
            {"weight": [1.0, 1.0, 1.0], "density": [0.2, 0.2, 0.9], "normalize": False, "lambda": 1.3},
            shape=(1000,),
        ),
        lambda b, i, p: methods.ties(b, i, p["weight"], p["density"], normalize=False, lambda_=1.3),
    ),
    "ties_rescaled": (
        _case("ties", {"weight": W, "density": D, "rescale": True}),
        lambda b, i, p: methods.ties(b, i, p["weight"], p["density"], rescale=True),
    ),
    "breadcrumbs_rescaled": (
        _case("breadcrumbs", {"weight": W, "density": D, "gamma": [0.02] * 3, "rescale": True}),
        lambda b, i, p: methods.breadcrumbs(b, i, p["weight"], p["density"], p["gamma"], rescale=True),
    ),
    "breadcrumbs": (
        _case("breadcrumbs", {"weight": W, "density": D, "gamma": [0.01, 0.1, 0.3]}),
        lambda b, i, p: methods.breadcrumbs(b, i, p["weight"], p["density"], p["gamma"]),
    ),
    "breadcrumbs_gamma0": (
        _case("breadcrumbs", {"weight": W, "density": D, "gamma": [0.0, 0.0, 0.0]}),
        lambda b, i, p: methods.breadcrumbs(b, i, p["weight"], p["density"], p["gamma"]),
    ),
    "breadcrumbs_ties": (
        _case(
            "breadcrumbs_ties", {"weight": W, "density": D, "gamma": [0.05, 0.05, 0.05], "normalize": True}
        ),
        lambda b, i, p: methods.breadcrumbs_ties(b, i, p["weight"], p["density"], p["gamma"], normalize=True),
    ),
    "slerp": (_case("slerp", {"t": 0.3}, n=1), lambda b, i, p: methods.slerp(b, i, t=0.3)),
    "slerp_colinear": (
        ({"base": torch.ones(50), "m0": 2 * torch.ones(50)}, {"method": "slerp", "parameters": {"t": 0.4}}),
        lambda b, i, p: methods.slerp(b, i, t=0.4),
    ),
    # random methods at density 1 are deterministic: the whole pipeline but the mask
    "dare_ties_dense": (
        _case("dare_ties", {"weight": W, "density": [1.0] * 3}),
        lambda b, i, p: methods.dare_ties(b, i, p["weight"], p["density"]),
    ),
    "della_dense": (
        _case("della", {"weight": W, "density": [1.0] * 3}),
        lambda b, i, p: methods.della(b, i, p["weight"], p["density"]),
    ),
}


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    cases = {name: case for name, (case, _) in DETERMINISTIC.items()}
    cases |= {name: case for name, case in RANDOM.items()}
    return run_cases(cases, tmp_path_factory.mktemp("oracle"))


@pytest.mark.parametrize("name", list(DETERMINISTIC))
def test_matches_mergekit(oracle, name):
    (inputs, spec), fn = DETERMINISTIC[name]
    models = [inputs[f"m{i}"] for i in range(sum(k.startswith("m") for k in inputs))]
    ours = (
        fn(models, spec["parameters"])
        if "base" not in inputs
        else fn(inputs["base"], models, spec["parameters"])
    )
    theirs = oracle[name][0]
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    tol = 1e-2 if ours.dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(ours.float(), theirs.float(), rtol=tol, atol=tol)
    if "base" in inputs:  # the same elements changed (the same selection), not just close values
        assert torch.equal(ours != inputs["base"], theirs != inputs["base"])


def test_trim_keeps_exactly_k_on_ties():
    delta = torch.tensor([3.0, -1.0, 1.0, 1.0, -1.0, 0.5, 2.0])
    kept = sparsify.trim_magnitude(delta.clone(), 0.5)  # k = 3: 3, 2 and the first of the 1s
    assert kept.tolist() == [3.0, -1.0, 0.0, 0.0, 0.0, 0.0, 2.0]
    assert int((sparsify.trim_outliers(delta.clone(), 4 / 7, 1 / 7) != 0).sum()) == 4


# --- random methods: statistics against mergekit's draws ---------------------------------------

DRAWS = 40
RANDOM = {
    "dare_linear": _case(
        "dare_linear", {"weight": [1.0], "density": [0.3]}, n=1, shape=(64, 64), draws=DRAWS
    ),
    "dare_ties": _case("dare_ties", {"weight": W, "density": D}, shape=(64, 64), draws=DRAWS),
    "della": _case(
        "della", {"weight": [1.0], "density": [0.5], "epsilon": [0.3]}, n=1, shape=(8, 512), draws=DRAWS
    ),
    "della_linear": _case(
        "della_linear", {"weight": W, "density": [0.4] * 3, "epsilon": [0.1] * 3}, shape=(64, 64), draws=DRAWS
    ),
}


def _ours(name, seed):
    inputs, spec = RANDOM[name]
    p = spec["parameters"]
    models = [inputs[f"m{i}"] for i in range(len(p["weight"]))]
    extra = {"epsilon": p["epsilon"]} if "epsilon" in p else {}
    fn = methods.METHODS[name].fn
    return fn(inputs["base"], models, p["weight"], p["density"], **extra, seed=seed, tensor_name="t")


@pytest.mark.parametrize("name", list(RANDOM))
def test_random_methods_match_mergekit_statistics(oracle, name):
    inputs, spec = RANDOM[name]
    base = inputs["base"]
    ours = torch.stack([_ours(name, s) for s in range(DRAWS)])
    theirs = torch.stack(oracle[name])
    # keep rate: the fraction of elements the merge changed
    rate_ours, rate_theirs = (ours != base).float().mean(), (theirs != base).float().mean()
    assert abs(rate_ours - rate_theirs) < 0.01, (rate_ours, rate_theirs)
    # rescaling: the mean over draws converges to the same tensor (L1 rescale, not 1/density)
    mean_ours, mean_theirs = ours.mean(0) - base, theirs.mean(0) - base
    err = (mean_ours - mean_theirs).abs().mean() / mean_theirs.abs().mean()
    assert err < 0.5, err  # 40 draws of each: sampling noise alone is ~0.3 at density 0.3
    assert abs(mean_ours.abs().sum() / mean_theirs.abs().sum() - 1) < 0.05
    if len(spec["parameters"]["weight"]) == 1:  # L1 rescale: every draw has the delta's L1 norm
        l1 = (inputs["m0"] - base).abs().sum()
        for stack in (ours, theirs):
            torch.testing.assert_close(
                (stack - base).abs().sum(dim=(1, 2)), l1.expand(DRAWS), rtol=1e-4, atol=1e-3
            )


def test_dare_single_model_l1_identity():
    """One model, weight 1: the survivors are the delta scaled so the L1 norm is unchanged."""
    inputs, _ = RANDOM["dare_linear"]
    delta = inputs["m0"] - inputs["base"]
    kept = _ours("dare_linear", 3) - inputs["base"]
    assert abs(float((kept != 0).float().mean()) - 0.3) < 0.03
    torch.testing.assert_close(kept.abs().sum(), delta.abs().sum(), rtol=1e-4, atol=1e-4)
    ratio = kept[kept != 0] / delta[kept != 0]
    torch.testing.assert_close(ratio, torch.full_like(ratio, float(ratio[0])), rtol=1e-4, atol=1e-4)


def test_della_keep_rate_rises_with_magnitude(oracle):
    """density 0.5, epsilon 0.3: the smallest tenth kept ~23 %, the largest tenth ~77 %, as mergekit."""
    inputs, _ = RANDOM["della"]
    delta = inputs["m0"] - inputs["base"]
    order = delta.abs().argsort(dim=1)
    small, large = order[:, :51], order[:, -51:]
    for stack in (torch.stack([_ours("della", s) for s in range(DRAWS)]), torch.stack(oracle["della"])):
        kept = stack != inputs["base"]
        rate_small = kept.gather(2, small.expand(DRAWS, -1, -1)).float().mean()
        rate_large = kept.gather(2, large.expand(DRAWS, -1, -1)).float().mean()
        assert abs(rate_small - 0.23) < 0.04 and abs(rate_large - 0.77) < 0.04, (rate_small, rate_large)


@pytest.mark.parametrize("name", list(RANDOM))
def test_random_methods_reproducible_by_seed(name):
    assert torch.equal(_ours(name, 5), _ours(name, 5))
    assert not torch.equal(_ours(name, 5), _ours(name, 6))


def test_della_domain_error():
    with pytest.raises(ValueError, match="epsilon"):
        sparsify.magprune(torch.randn(10), 0.9, 0.15, True, key=0)


@pytest.mark.parametrize("seed", range(20))
def test_keep_ranks_equals_a_stable_sort(seed):
    """The O(n) selection keeps exactly the values of ranks [lo, hi) of a sort, ties included."""
    g = torch.Generator().manual_seed(seed)
    mag = torch.randint(0, 6, (200,), generator=g).float()  # many ties
    lo, hi = sorted(torch.randint(0, 201, (2,), generator=g).tolist())
    got = sparsify.keep_ranks(mag, lo, hi)
    assert sorted(mag[got].tolist()) == sorted(mag.tolist())[lo:hi]
