"""Kill a model worker's replica under load and count what the clients got back.

The scenario behind ``tests/test_chaos.py`` and ``benchmarks/chaos.py``: ``Flood`` posts
solves over real HTTP, all at once from a thread pool; ``kill_busiest_replica`` kills the
replica of a deployment with the most calls in flight (``ray.kill``, no restart: Serve's
controller starts a replacement); ``watch_recovery`` times the service back; ``Report``
counts correct 200s, wrong 200s, 503s, other errors and requests that hung.
"""

from __future__ import annotations

import statistics
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import ray
from ray import serve

from nexus_ray.serving.local import request


@dataclass(frozen=True)
class Outcome:
    """One request: its status (None: no answer within the bound, it hung), the answer of a 200,
    the error type otherwise, and when it was sent and finished (``time.monotonic``)."""

    status: int | None
    answer: str | None
    error: str | None
    sent: float
    done: float

    @property
    def seconds(self) -> float:
        return self.done - self.sent


def post(url: str, body: dict, bound_s: float, headers: dict | None = None) -> Outcome:
    sent = time.monotonic()
    try:
        status, out = request(url, body, headers, timeout=bound_s)
    except OSError as err:  # the socket timed out (hung) or the connection broke
        hung = isinstance(err, TimeoutError) or "timed out" in str(err)
        return Outcome(None if hung else -1, None, type(err).__name__, sent, time.monotonic())
    answer = out.get("answer") if status == 200 else None
    error = None if status == 200 else str(out.get("error", {}).get("type", out))
    return Outcome(status, answer, error, sent, time.monotonic())


class Flood:
    """``bodies`` posted to ``url`` all at once, one thread each; each waits at most ``bound_s``."""

    def __init__(self, url: str, bodies: list[dict], bound_s: float, headers: dict | None = None) -> None:
        self._pool = ThreadPoolExecutor(max_workers=len(bodies), thread_name_prefix="flood")
        self.futures: list[Future[Outcome]] = [
            self._pool.submit(post, url, b, bound_s, headers) for b in bodies
        ]

    def finished(self) -> int:
        return sum(f.done() for f in self.futures)

    def wait_finished(self, count: int, timeout_s: float, tick=None) -> None:
        """Until ``count`` requests have finished (``tick(finished)`` is called as they do)."""
        deadline = time.monotonic() + timeout_s
        while (done := self.finished()) < count:
            if tick is not None:
                tick(done)
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {done} of {count} requests finished within {timeout_s:.0f} s")
            time.sleep(0.05)
        if tick is not None:
            tick(self.finished())

    def outcomes(self, tick=None) -> list[Outcome]:
        """Every outcome (each request ends by its own bound, so this ends too)."""
        outcomes = []
        for f in self.futures:
            outcomes.append(f.result())
            if tick is not None:
                tick(sum(x.done() for x in self.futures))
        self._pool.shutdown()
        return outcomes


def replicas(app: str, deployment: str) -> dict[str, ray.actor.ActorHandle]:
    """The live replica actors of ``app``'s ``deployment``, by actor name."""
    found = {}
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if f"::{app}#{deployment}#" in actor["name"]:
            found[actor["name"]] = ray.get_actor(actor["name"], namespace=actor["namespace"])
    return found


@dataclass(frozen=True)
class Kill:
    replica: str
    calls_in_flight: int  # on the killed replica, just before the kill
    at: float  # time.monotonic() of the kill


def kill_busiest_replica(app: str, deployment: str, min_in_flight: int = 1, timeout_s: float = 60) -> Kill:
    """Kill (no restart) the replica with the most calls in flight, once one has ``min_in_flight``."""
    deadline = time.monotonic() + timeout_s
    while True:
        live = replicas(app, deployment)
        names = list(live)
        counts = ray.get([live[n].get_num_ongoing_requests.remote() for n in names], timeout=30)
        busiest, name = max(zip(counts, names)) if names else (0, "")
        if busiest >= min_in_flight:
            at = time.monotonic()
            ray.kill(live[name], no_restart=True)
            return Kill(name, busiest, at)
        if time.monotonic() > deadline:
            raise TimeoutError(f"no replica of {deployment} had {min_in_flight} calls in flight")
        time.sleep(0.02)


@dataclass
class Recovery:
    """Seconds from the kill to the first 200 for a request sent after it (``answering_s``), and
    to the deployment running its full count of replicas again, the replacement included
    (``replaced_s``); None: not within the watch."""

    answering_s: float | None = None
    replaced_s: float | None = None
    _threads: list[threading.Thread] = field(default_factory=list)

    def join(self) -> Recovery:
        for t in self._threads:
            t.join()
        return self


def watch_recovery(
    url: str, probe: dict, kill: Kill, app: str, deployment: str, count: int, timeout_s: float = 120
) -> Recovery:
    """Two background watchers from the kill on: a client sending ``probe`` one at a time until
    a 200, and a poll of Serve's status until ``count`` replicas run, none of them the killed one."""
    rec = Recovery()
    deadline = kill.at + timeout_s

    def answering() -> None:
        while time.monotonic() < deadline:
            out = post(url, probe, max(1.0, deadline - time.monotonic()))
            if out.status == 200:
                rec.answering_s = out.done - kill.at
                return
            time.sleep(0.2)

    def replaced() -> None:
        while time.monotonic() < deadline:
            live = replicas(app, deployment)
            states = serve.status().applications[app].deployments[deployment].replica_states
            if kill.replica not in live and len(live) == count and states.get("RUNNING", 0) == count:
                rec.replaced_s = time.monotonic() - kill.at
                return
            time.sleep(0.2)

    rec._threads = [threading.Thread(target=f, daemon=True) for f in (answering, replaced)]
    for t in rec._threads:
        t.start()
    return rec


@dataclass(frozen=True)
class Report:
    requests: int
    correct: int  # 200 with the expected answer
    wrong: int  # 200 with another answer
    unavailable: int  # 503
    other: int  # any other status, or a broken connection
    hung: int  # no answer within the bound
    p50_s: float | None  # latency of the 200s
    p99_s: float | None

    @classmethod
    def of(cls, outcomes: list[Outcome], expected: list[str]) -> Report:
        ok = [o for o in outcomes if o.status == 200]
        right = sum(o.status == 200 and o.answer == e for o, e in zip(outcomes, expected))
        seconds = sorted(o.seconds for o in ok)
        return cls(
            requests=len(outcomes),
            correct=right,
            wrong=len(ok) - right,
            unavailable=sum(o.status == 503 for o in outcomes),
            other=sum(o.status not in (200, 503, None) for o in outcomes),
            hung=sum(o.status is None for o in outcomes),
            p50_s=statistics.median(seconds) if seconds else None,
            p99_s=seconds[min(len(seconds) - 1, round(0.99 * (len(seconds) - 1)))] if seconds else None,
        )
