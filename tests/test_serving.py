"""The service end to end: a real local Ray cluster, Serve, the zoo models, real HTTP.

One cluster and two applications for the whole module: ``nexus`` (API keys on, the limits
of deployments/local-cpu.yaml) and ``tight`` (a tiny compute budget and timeout, for 429/504).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import ray
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ports import free_port, start_serve, stop_serve
from ray import serve

from nexus_ray.config import load_service_config
from nexus_ray.engines.hf import HFPolicyEngine, HFRewardEngine
from nexus_ray.planner.request import PlanError
from nexus_ray.planner.table import load_table
from nexus_ray.search import registry
from nexus_ray.search.base import SearchContext
from nexus_ray.serving import admission
from nexus_ray.serving.app import build_app
from nexus_ray.serving.local import request, wait_healthy
from nexus_ray.tasks import arith
from nexus_ray.tasks.format import ARITH
from nexus_ray.zoo.registry import resolve

KEY = "test-key-1"
METRICS_PORT = 0
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def service():
    os.environ["NEXUS_TEST_KEYS"] = f"{KEY},test-key-2"  # inherited by the cluster's workers
    global METRICS_PORT
    METRICS_PORT = free_port()
    url = start_serve("nexus-test", _metrics_export_port=METRICS_PORT)
    config, _ = load_service_config("deployments/local-cpu.yaml")
    args = config.model_dump() | {"api_keys_env": "NEXUS_TEST_KEYS", "planner_name": "planner-main"}
    args["planner"] |= {"max_budget": 16}
    args["policy_worker"] |= {"num_cpus": 0.1}
    args["prm_worker"] |= {"num_cpus": 0.1}
    args["num_cpus"] = 0.1
    tight = config.model_dump() | {
        "planner_name": "planner-tight",
        "request_timeout_s": 0.001,
        "num_cpus": 0.1,
    }
    tight["planner"] |= {"tokens_per_second": 10.0, "burst_seconds": 10.0, "tokens_per_generation": 64.0}
    tight["policy_worker"] |= {"num_cpus": 0.1}
    tight["prm_worker"] |= {"num_cpus": 0.1}
    for name in ("planner-main", "planner-tight"):
        admission.clear_state(name)
    serve.run(build_app(args), name="nexus", route_prefix="/", blocking=False)
    serve.run(build_app(tight), name="tight", route_prefix="/tight", blocking=False)
    wait_healthy(url, 240)
    wait_healthy(url + "/tight", 240)
    yield url
    stop_serve()


def post(url: str, body, headers=AUTH, raw: bytes | None = None) -> tuple[int, dict]:
    if raw is None:
        return request(url, body, headers)
    req = urllib.request.Request(url, data=raw, headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def test_health_and_models(service):
    assert request(service + "/healthz")[0] == 200  # no key needed for health checks
    status, out = request(service + "/v1/models", headers=AUTH)
    assert status == 200 and out["data"][0]["id"] == "nexus-arith"
    assert "beam" in out["data"][0]["strategies"]


def test_solve_matches_in_process_search(service):
    """The same strategy over remote workers gives the same answer and ledger as in-process."""
    problem = "48*7-93+15*4"
    status, out = post(
        service + "/v1/solve",
        {"problem": problem, "strategy": "weighted", "budget": 4, "return_candidates": True},
    )
    assert status == 200, out
    assert len(out["candidates"]) == 4 and out["plan"]["source"] == "request"
    ctx = SearchContext.for_problem(  # the service's engines cache; so do these
        HFPolicyEngine(resolve("arith-policy"), prefix_cache_tokens=32768),
        HFRewardEngine(resolve("arith-prm-rewrite"), cache_tokens=32768),
        ARITH,
        problem,
        seed=0,
    )
    local = asyncio.run(registry.run("weighted", ctx, 4))
    assert out["answer"] == local.answer and out["solution"] == local.solution
    assert out["ledger"] == local.ledger.to_dict()
    assert out["ledger"]["prm_tokens"] > 0 and out["ledger"]["policy_generated_tokens"] > 0


def test_planner_default_plan_and_greedy(service):
    """No strategy and no budget: the calibrated table plans it and the response says how."""
    status, out = post(service + "/v1/solve", {"problem": "Q: 12 + 7*3"})
    assert status == 200 and out["plan"]["source"] == "table", out
    assert out["strategy"] == "planner" and out["answer"] == str(arith.evaluate("12+7*3"))
    table = load_table("arith-zoo")
    assert 0 <= out["difficulty"] < len(table.bins) == len(table.edges) + 1
    chosen = out["plan"]["params"]
    assert chosen["bin"] == out["difficulty"] and chosen["plan"].split("@")[0] in (
        "stop",
        "majority",
        "weighted",
    )
    assert out["ledger"]["generations"] >= table.estimator.probe.samples
    status, out = post(service + "/v1/solve", {"problem": "Q: 12 + 7*3", "budget": 2})
    assert status == 200 and out["plan"]["source"] == "request" and out["strategy"] == "weighted"
    status, out = post(service + "/v1/solve", {"problem": "12+7*3", "strategy": "greedy"})
    assert status == 200 and out["answer"] == str(arith.evaluate("12+7*3"))
    assert out["ledger"]["generations"] == 1


def test_chat_completions_openai_shape(service):
    body = {
        "model": "nexus-arith",
        "messages": [{"role": "system", "content": "be exact"}, {"role": "user", "content": "57-8*6+19"}],
        "temperature": 0.7,
        "nexus": {"strategy": "majority", "budget": 4},
    }
    status, out = post(service + "/v1/chat/completions", body)
    assert status == 200, out
    assert out["object"] == "chat.completion" and out["choices"][0]["message"]["role"] == "assistant"
    assert out["usage"]["completion_tokens"] == out["nexus"]["ledger"]["policy_generated_tokens"] > 0
    assert out["nexus"]["strategy"] == "majority"


@pytest.mark.parametrize(
    "body, status, needle",
    [
        ({"problem": "what is love?"}, 422, "not an arithmetic expression"),
        ({"problem": "1+2", "strategy": "telepathy"}, 422, "unknown strategy"),
        ({"problem": "1+2", "budget": 17}, 422, "ceiling of 16"),
        ({"problem": "1+2", "budget": -3}, 422, "budget"),
        ({"problem": "1+2", "budget": "8"}, 422, "budget"),
        ({"problem": "1+" * 60 + "1"}, 422, "longer than 80"),
        ({"problem": "1+2", "colour": "red"}, 422, "colour"),
        ({}, 422, "problem"),
    ],
)
def test_bad_requests_get_clear_422s(service, body, status, needle):
    got, out = post(service + "/v1/solve", body)
    assert got == status and needle in out["error"]["message"], out


def test_auth_body_limit_and_malformed_json(service):
    assert post(service + "/v1/solve", {"problem": "1+2"}, headers={})[0] == 401
    assert post(service + "/v1/solve", {"problem": "1+2"}, headers={"Authorization": "Bearer nope"})[0] == 401
    assert post(service + "/v1/solve", {"problem": "1+2"}, headers={"x-api-key": "test-key-2"})[0] == 200
    status, out = post(service + "/v1/solve", None, raw=b'{"problem": "' + b"1" * 70000 + b'"}')
    assert status == 413 and "larger than" in out["error"]["message"]
    assert post(service + "/v1/solve", None, raw=b'{"problem": ')[0] == 422
    assert post(service + "/v1/solve", None, raw=b"")[0] == 422


def test_timeout_is_504_and_rate_limit_is_429(service):
    status, out = request(service + "/tight/v1/solve", {"problem": "12+7*3", "strategy": "greedy"})
    assert status == 504 and out["error"]["type"] == "timeout"
    req = urllib.request.Request(
        service + "/tight/v1/solve",
        data=json.dumps({"problem": "1+2", "strategy": "greedy"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 429 and int(err.value.headers["Retry-After"]) >= 1


def test_planner_restart_keeps_state(service):
    planner = ray.get_actor("planner-main", namespace=admission.NAMESPACE)
    before = ray.get(planner.stats.remote())
    ray.kill(planner, no_restart=False)  # asynchronous: poll until the new incarnation answers
    deadline = time.monotonic() + 30
    after = before
    while after["restarts"] == before["restarts"]:
        assert time.monotonic() < deadline, "the Planner did not come back within 30 s"
        try:
            after = ray.get(planner.stats.remote(), timeout=10)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            pass
        time.sleep(0.2)
    assert after["restarts"] == before["restarts"] + 1
    assert after["counters"]["admitted"] == before["counters"]["admitted"]
    assert after["spend"] == before["spend"]  # the spend controller's balance too
    assert post(service + "/v1/solve", {"problem": "1+2", "strategy": "greedy"})[0] == 200


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=8,
)
solve_bodies = st.fixed_dictionaries(
    {},
    optional={
        "problem": st.one_of(
            st.text(max_size=120), st.sampled_from(["1+2", "Q: 3*4-5", "", " ", "1++2", "٣+٤"]), json_values
        ),
        "budget": st.one_of(st.integers(-(10**20), 10**20), json_values),
        "strategy": st.one_of(st.sampled_from(["greedy", "beam", "mcts", "", "GREEDY"]), json_values),
        "seed": st.one_of(st.integers(-(10**20), 10**20), json_values),
        "return_candidates": json_values,
        "extra": json_values,
    },
)
chat_bodies = st.fixed_dictionaries(
    {"model": st.one_of(st.just("nexus-arith"), json_values)},
    optional={
        "messages": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "role": st.sampled_from(["user", "system", "bot"]),
                        "content": st.one_of(st.text(max_size=30), json_values),
                    }
                ),
                max_size=3,
            ),
            json_values,
        ),
        "nexus": st.one_of(
            st.fixed_dictionaries({}, optional={"budget": json_values, "strategy": json_values}), json_values
        ),
        "stream": json_values,
    },
)
FUZZED: list[int] = []


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(
    route=st.sampled_from(["/v1/solve", "/v1/chat/completions"]),
    solve=solve_bodies,
    chat=chat_bodies,
    raw=st.one_of(st.none(), st.binary(max_size=64), st.text(max_size=64).map(str.encode)),
)
def test_fuzz_never_5xx(service, route, solve, chat, raw):
    """Hostile and malformed bodies, and some valid ones among them: never a 5xx."""
    body = solve if route == "/v1/solve" else chat
    status, out = post(service + route, body, raw=raw)
    FUZZED.append(status)
    assert status < 500, (route, body, raw, out)


def test_fuzz_left_the_service_healthy(service):
    assert len(FUZZED) >= 500 and request(service + "/healthz")[0] == 200
    assert {200, 401, 413, 422} & set(FUZZED) >= {200, 422}, sorted(set(FUZZED))  # both kinds exercised


def test_killing_a_worker_mid_flight(service):
    """120 requests in flight, the policy replica killed: each is a correct 200 or a 503."""
    problems = arith.generate_set(120, seed=7)
    results: list[tuple[int, dict, arith.Problem]] = []

    def call(p: arith.Problem) -> None:
        status, out = post(
            service + "/v1/solve", {"problem": p.expression, "strategy": "majority", "budget": 2}
        )
        results.append((status, out, p))

    threads = [threading.Thread(target=call, args=(p,)) for p in problems]
    for t in threads:
        t.start()
    time.sleep(0.3)
    replica = next(
        a for a in ray.util.list_named_actors(all_namespaces=True) if "nexus#PolicyWorker" in a["name"]
    )
    ray.kill(ray.get_actor(replica["name"], namespace=replica["namespace"]), no_restart=True)
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a request hung"
    assert {s for s, _, _ in results} <= {200, 503}
    assert any(s == 503 for s, _, _ in results), "the kill landed after every request finished"
    for status, out, p in results:
        if status == 200:  # a completed answer is the engine's real answer, not a leftover
            assert out["answer"] == ARITH.answer(out["solution"]) and out["ledger"]["generations"] == 2
        else:
            assert out["error"]["type"] == "unavailable"
    deadline = time.monotonic() + 30
    while post(service + "/v1/solve", {"problem": "1+2", "strategy": "greedy"})[0] != 200:
        assert time.monotonic() < deadline, "not serving again within 30 s"
        time.sleep(0.5)


def test_remote_proxies_implement_the_engine_protocols():
    from nexus_ray.engines.base import PolicyEngine, RewardEngine
    from nexus_ray.serving.workers import RemotePolicyEngine, RemoteRewardEngine, WorkerInfo

    info = WorkerInfo("arith-policy", str(resolve("arith-policy")), 866_000, "node", (), None)
    policy = RemotePolicyEngine(None, info)
    assert isinstance(policy, PolicyEngine) and isinstance(RemoteRewardEngine(None, info), RewardEngine)
    assert policy.count_tokens("Q: 1+2\n") == HFPolicyEngine(resolve("arith-policy")).count_tokens("Q: 1+2\n")


def test_planner_admission_without_ray():
    """The token bucket: reserve the estimate, refuse with a retry-after, settle the difference."""
    p = admission.Admission({"tokens_per_second": 10, "burst_seconds": 10, "tokens_per_generation": 16})
    plan = p.plan("1+2", 4, "weighted", "key-a")
    assert (plan.strategy, plan.budget, plan.reserved, plan.source) == ("weighted", 4, 64.0, "request")
    with pytest.raises(admission.AdmissionDenied) as denied:
        p.plan("1+2", 4, "weighted", "key-a")  # 36 left, 64 needed: ~2.8 s at 10/s
    assert 2.0 < denied.value.retry_after < 3.0
    assert p.plan("1+2", 4, "weighted", "key-b").reserved == 64.0  # keys have their own buckets
    p.settle("key-a", plan, 10.0)  # it spent less than its 64 reserved: the rest comes back
    assert p.plan("1+2", 4, "weighted", "key-a").budget == 4
    assert p.plan("1+2", None, None, "key-c").source == "defaults"
    with pytest.raises(PlanError, match="ceiling"):
        p.plan("1+2", 65, None)
    with pytest.raises(PlanError, match="unknown strategy"):
        p.plan("1+2", None, "telepathy")
    assert p.stats()["counters"]["rejected_rate"] == 1
    queued = admission.Admission({"tokens_per_second": 10, "burst_seconds": 1, "max_queue_seconds": 30})
    assert queued.plan("1+2", 1, "greedy").wait_s == 0  # bigger than the bucket: runs, in debt
    assert 5 < queued.plan("1+2", 1, "greedy").wait_s < 30  # queued, not refused, until it is repaid


def test_planner_serves_the_table_allocation_without_ray():
    table = load_table("arith-zoo")
    p = admission.Admission({"table": "arith-zoo", "mean_budget": 200.0}, table)
    plan = p.plan("1+2", None, None)
    assert (plan.strategy, plan.source) == ("planner", "table") and len(plan.params["mixes"]) == len(
        table.bins
    )
    spend = sum(
        b.weight * ((1 - p_) * b.choices[lo].compute + p_ * b.choices[hi].compute)
        for b, (lo, hi, p_) in zip(table.bins, plan.params["mixes"])
    )
    assert spend <= 200.0 + 1e-6 or all(lo == 0 and p_ == 0 for lo, _, p_ in plan.params["mixes"])
    assert p.plan("1+2", 4, None).strategy == "weighted"  # a budget alone: the default strategy


def test_a_missing_or_stale_table_fails_at_startup():
    config, _ = load_service_config("deployments/local-cpu.yaml")
    args = config.model_dump()
    args["planner"] |= {"table": "no-such-table.json"}
    with pytest.raises(ValueError, match="not found"):
        build_app(args)
    args["planner"] |= {"table": "arith-zoo"}
    args["policy"] |= {"model": "arith-prm"}  # another model than the table was calibrated with
    with pytest.raises(ValueError, match="calibrated with policy"):
        build_app(args)


def test_prometheus_metrics_are_exported(service):
    """Ray's metrics agent serves the ingress's counters and histograms to Prometheus."""
    assert post(service + "/v1/solve", {"problem": "2+3", "strategy": "greedy"})[0] == 200
    deadline = time.monotonic() + 60
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        names = (
            "ray_nexus_requests",
            "ray_nexus_tokens",
            "ray_nexus_strategy",
            "ray_nexus_latency_seconds_bucket",
        )
        if all(n in text for n in names):
            break
        assert time.monotonic() < deadline, [n for n in names if n not in text]
        time.sleep(2)
    assert 'route="/v1/solve"' in text and 'strategy="greedy"' in text


def test_no_request_spends_more_than_its_budget(service):
    """48 solves through the service, named strategies at mixed budgets and table plans: every
    response reports its budget in policy-token equivalents (``plan.ceiling``) and its ledger
    stays within it; the admission actor's spend controller settled every table plan."""
    planner = ray.get_actor("planner-main", namespace=admission.NAMESPACE)
    settled_before = ray.get(planner.stats.remote())["spend"]["settled"]
    named = ["greedy", "majority", "weighted", "adaptive", "beam", "dvts", "lookahead", "mcts", "particles"]
    problems = iter(p.expression for p in arith.generate_set(48, seed=16))
    mixed = [(s, b) for s in named for b in (1, 4, 8)]
    calls = [("/v1/solve", {"problem": next(problems), "strategy": s, "budget": b}) for s, b in mixed]
    calls += [("/v1/solve", {"problem": next(problems)}) for _ in range(16)]  # planned by the table
    calls += [
        (
            "/v1/chat/completions",
            {
                "model": "nexus-arith",
                "messages": [{"role": "user", "content": next(problems)}],
                "nexus": {"strategy": "weighted", "budget": b},
            },
        )
        for b in (1, 2, 3, 5, 6)
    ]
    assert len(calls) == 48
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda call: post(service + call[0], call[1]), calls))
    for (route, body), (status, out) in zip(calls, answers):
        assert status == 200, (body, out)
        solved = out if route == "/v1/solve" else out["nexus"]
        plan, spent = solved["plan"], solved["ledger"]["policy_token_equivalents"]
        assert plan["ceiling"] is not None and spent <= plan["ceiling"], (body, plan, spent)
        if "strategy" in body or "nexus" in body:
            assert plan["mean_budget"] is None
        else:
            assert plan["source"] == "table" and plan["mean_budget"] > 0
    deadline = time.monotonic() + 30  # settling is fire-and-forget: wait for the actor to catch up
    while ray.get(planner.stats.remote())["spend"]["settled"] < settled_before + 16:
        assert time.monotonic() < deadline, "the table plans were not all settled"
        time.sleep(0.2)
