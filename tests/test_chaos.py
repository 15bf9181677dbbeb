"""No lost answers when a replica dies (issue 16).

The proxies' failover on fakes (which errors are retried, how often, with what request), then
the real thing: Ray Serve, the zoo models, real HTTP, two policy replicas, 100 solves in
flight and the busiest policy replica killed under them: 100 correct 200s, none hung.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from ports import start_serve, stop_serve
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError, TaskCancelledError
from ray.serve.exceptions import BackPressureError

from nexus_ray.config import AutoscalingConfig, WorkerConfig, load_service_config
from nexus_ray.engines.base import GenerationParams, GenerationResult
from nexus_ray.serving import admission, chaos
from nexus_ray.serving.app import build_app
from nexus_ray.serving.local import wait_healthy
from nexus_ray.serving.workers import Failover, RemotePolicyEngine, WorkerInfo, WorkerUnavailable
from nexus_ray.tasks import arith
from nexus_ray.zoo.registry import resolve

INFO = WorkerInfo("arith-policy", str(resolve("arith-policy")), 866_000, "node", (), None)
RESULT = [GenerationResult("Q: 1+2\n", 5)]


class FakeHandle:
    """A deployment handle whose calls fail with ``errors`` in turn, then answer."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls: list[tuple] = []
        self.generate = self

    def remote(self, *args):
        self.calls.append(args)

        async def answer():
            if self.errors:
                raise self.errors.pop(0)
            return RESULT

        return answer()


def generate(handle: FakeHandle, failover: Failover):
    engine = RemotePolicyEngine(handle, INFO, failover)
    params = GenerationParams(n=4, temperature=1.0, seed=1234)
    return engine, asyncio.run(engine.generate(["Q: 1+2\n"], params))


def test_failover_needs_a_second_replica():
    assert Failover.for_worker(WorkerConfig(), 60).attempts == 1
    assert Failover.for_worker(WorkerConfig(replicas=2), 60).attempts == 3
    assert Failover.for_worker(WorkerConfig(replicas=2, failover_attempts=5), 30).attempts == 5
    floor_2 = WorkerConfig(autoscaling=AutoscalingConfig(min_replicas=2, max_replicas=4))
    floor_1 = WorkerConfig(autoscaling=AutoscalingConfig(min_replicas=1, max_replicas=4))
    assert Failover.for_worker(floor_2, 60).attempts == 3 and Failover.for_worker(floor_1, 60).attempts == 1
    assert [Failover(backoff_s=0.05, max_backoff_s=0.15).delay(r) for r in (1, 2, 3)] == [0.05, 0.1, 0.15]


@pytest.mark.parametrize(
    "lost",
    [
        ActorDiedError(),
        ActorUnavailableError("unreachable", None),
        BackPressureError(num_queued_requests=9, max_queued_requests=8),
    ],
)
def test_a_lost_call_is_retried_with_the_identical_request(lost):
    handle = FakeHandle(lost, lost)
    engine, out = generate(handle, Failover(attempts=3, backoff_s=0.001))
    assert out == RESULT and len(handle.calls) == 3 and engine.counts == {"retried": 2}
    assert handle.calls[0] == handle.calls[1] == handle.calls[2]  # same prompts, same seed
    assert handle.calls[0][1].seed == 1234


def test_retries_are_bounded_by_attempts_and_deadline():
    handle = FakeHandle(*[ActorDiedError()] * 5)
    with pytest.raises(WorkerUnavailable, match="policy worker is unavailable"):
        generate(handle, Failover(attempts=3, backoff_s=0.001))
    assert len(handle.calls) == 3
    handle = FakeHandle(*[ActorDiedError()] * 5)
    start = time.monotonic()
    with pytest.raises(WorkerUnavailable):  # the second retry would start past the deadline
        generate(handle, Failover(attempts=5, backoff_s=0.1, deadline_s=0.25))
    assert len(handle.calls) == 2 and time.monotonic() - start < 1


def test_one_replica_our_errors_and_cancellations_are_not_retried():
    handle = FakeHandle(ActorDiedError())
    with pytest.raises(WorkerUnavailable):  # one replica: a 503 at once, as before failover
        generate(handle, Failover.for_worker(WorkerConfig(), 60))
    assert len(handle.calls) == 1
    handle = FakeHandle(TaskCancelledError())
    with pytest.raises(WorkerUnavailable):
        generate(handle, Failover(attempts=3, backoff_s=0.001))
    assert len(handle.calls) == 1
    handle = FakeHandle(RayTaskError("generate", "Traceback ...", ValueError("bad prompt")))
    with pytest.raises(RayTaskError):  # the engine's own error: the same call would fail again
        generate(handle, Failover(attempts=3, backoff_s=0.001))
    assert len(handle.calls) == 1


REQUESTS = 100
BOUND_S = 120  # a request not answered within this hung (the service's own timeout is 60 s)


@pytest.fixture(scope="module")
def two_replicas():
    url = start_serve("nexus-chaos")
    config, _ = load_service_config("deployments/local-cpu.yaml")
    args = config.model_dump() | {"planner_name": "planner-chaos", "num_cpus": 0.25}
    # one retry only: if Serve sent a retry to the dead replica again, that call would be a 503
    args["policy_worker"] |= {"replicas": 2, "num_cpus": 0.25, "failover_attempts": 2}
    args["prm_worker"] |= {"num_cpus": 0.25}
    admission.clear_state("planner-chaos")
    serve.run(build_app(args), name="nexus", route_prefix="/", blocking=False)
    try:
        wait_healthy(url, 400)
        yield url
    finally:
        stop_serve()


def test_killing_one_of_two_policy_replicas_loses_no_answer(two_replicas):
    """100 seeded solves in flight, the busiest policy replica killed: 100 correct 200s."""
    problems = arith.generate_set(REQUESTS, seed=16, levels=(1,))  # weighted@4 solves all 100
    bodies = [{"problem": p.expression, "strategy": "weighted", "budget": 4} for p in problems]
    flood = chaos.Flood(two_replicas + "/v1/solve", bodies, BOUND_S)
    kill = chaos.kill_busiest_replica("nexus", "PolicyWorker", min_in_flight=10)
    in_flight = REQUESTS - flood.finished()
    outcomes = flood.outcomes()
    report = chaos.Report.of(outcomes, [p.answer for p in problems])
    assert kill.calls_in_flight >= 10 and in_flight > 0, (kill, in_flight)  # it landed mid-flight
    assert report.hung == 0 and max(o.seconds for o in outcomes) < BOUND_S
    assert report.correct == REQUESTS, (report, sorted({(o.status, o.error) for o in outcomes}, key=str))
    assert "PolicyWorker" in kill.replica and kill.replica not in chaos.replicas("nexus", "PolicyWorker")
