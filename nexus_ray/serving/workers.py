"""Serve deployments that hold the models, and proxies that make them look like local engines.

``PolicyWorker`` and ``RewardWorker`` each wrap one engine built from config (``hf`` or
``vllm``). Concurrent calls from many solves are merged into engine batches: the HF engine
merges calls that arrive while it is busy (``MicroBatcher``, the equivalent of
``@serve.batch`` that also groups by sampling parameters), vLLM's async engine batches
continuously. ``batching: false`` serialises calls instead, the baseline the throughput
benchmark compares against.

``RemotePolicyEngine`` / ``RemoteRewardEngine`` implement the engine protocols over a
deployment handle, so the search code runs unchanged against remote workers. A call whose
replica dies (or sheds load) is tried again on a live replica when the worker runs at least
two (``Failover``): calls are seeded, so the retry sends the identical request and gets the
same answer. Otherwise, or once the tries are spent, it surfaces as ``WorkerUnavailable``
(HTTP 503, retryable), never as a hang or a wrong answer. Errors raised by the engine itself
(``RayTaskError``) are never retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import ray
from ray import serve
from ray.exceptions import RayError, RayTaskError, TaskCancelledError
from ray.serve.exceptions import RayServeException
from ray.util import metrics
from transformers import AutoTokenizer

from nexus_ray.config import EngineConfig, RewardConfig, ServiceConfig, WorkerConfig
from nexus_ray.engines import build_policy_engine, build_reward_engine
from nexus_ray.engines.base import GenerationParams, GenerationResult, ScoreRequest, ScoreResult
from nexus_ray.zoo.registry import resolve

logger = logging.getLogger("ray.serve")
T = TypeVar("T")


class WorkerUnavailable(RuntimeError):
    """A model worker died, is restarting or is overloaded; the request may be retried."""


@dataclass(frozen=True)
class WorkerInfo:
    """What a replica holds and where it runs (node, GPUs, placement group), for proxies and ops."""

    model_name: str
    model_path: str
    num_parameters: int
    node_id: str
    gpu_ids: tuple[str, ...]
    placement_group: str | None
    prefix_caching: bool = False  # whether the engine reuses prompt prefixes' KV (the ledger's mode)
    merge_probe_models: int = 0  # models that read each prompt for test-time merge coefficients (T3)


class _Worker:
    def __init__(self, engine, model: str, batching: bool) -> None:
        self.engine = engine
        context = ray.get_runtime_context()
        pg = context.get_placement_group_id()
        self._info = WorkerInfo(
            engine.model_name,
            str(resolve(model)),
            engine.num_parameters,
            context.get_node_id(),
            tuple(str(g) for g in ray.get_gpu_ids()),
            pg,
            getattr(engine, "prefix_caching", False),
            getattr(engine, "merge_probe_models", 0),
        )
        self._serial = None if batching else asyncio.Lock()

    def info(self) -> WorkerInfo:
        return self._info

    def _one_at_a_time(self):
        return self._serial if self._serial is not None else contextlib.nullcontext()

    def __del__(self) -> None:
        self.engine.shutdown()


@serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.5})
class PolicyWorker(_Worker):
    def __init__(self, config: dict, batching: bool = True) -> None:
        cfg = EngineConfig.model_validate(config)
        super().__init__(build_policy_engine(cfg), cfg.model, batching)

    async def generate(self, prompts: list[str], params: GenerationParams) -> list[GenerationResult]:
        async with self._one_at_a_time():
            return await self.engine.generate(prompts, params)


@serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.5})
class RewardWorker(_Worker):
    def __init__(self, config: dict, batching: bool = True) -> None:
        cfg = RewardConfig.model_validate(config)
        super().__init__(build_reward_engine(cfg), cfg.model, batching)

    async def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        async with self._one_at_a_time():
            return await self.engine.score(requests)


def worker_options(engine: EngineConfig, worker: WorkerConfig) -> dict:
    """Serve options for a worker: replicas, CPUs, GPUs (fractions allowed), and for tensor
    parallelism a placement group of one GPU per shard packed on one node (the replica's CPU
    goes into bundle 0; vLLM's workers take the GPUs)."""
    options: dict = {"max_ongoing_requests": worker.max_ongoing_requests}
    if worker.autoscaling is not None:
        options["autoscaling_config"] = worker.autoscaling.model_dump()
    else:
        options["num_replicas"] = worker.replicas
    if engine.tensor_parallel_size > 1:
        options["ray_actor_options"] = {"num_cpus": worker.num_cpus, "num_gpus": 0}
        options["placement_group_bundles"] = [{"CPU": worker.num_cpus, "GPU": 1}] + [
            {"GPU": 1} for _ in range(engine.tensor_parallel_size - 1)
        ]
        options["placement_group_strategy"] = "STRICT_PACK"
    else:
        options["ray_actor_options"] = {"num_cpus": worker.num_cpus, "num_gpus": engine.num_gpus}
    return options


@dataclass(frozen=True)
class Failover:
    """How a proxy retries a call whose replica died: ``attempts`` tries in all, ``backoff_s``
    before the first retry, doubling up to ``max_backoff_s``, and no retry that would start
    more than ``deadline_s`` after the call began (the ingress's ``request_timeout_s``, which
    also bounds the whole solve). ``attempts=1``: no retry, the first failure is a 503.

    Serve's router (Ray 2.60) drops a replica from its rotation when a call to it fails with
    ``ActorDiedError``, in the call's completion callback, which in every chaos run so far ran
    before the caller saw the error: an immediate retry already went to the live replica
    (``tests/test_chaos.py`` allows one retry only and gets every answer). The short backoff
    is a margin for that ordering, spreads the retries of a burst of calls that died together,
    and gives an ``ActorUnavailableError`` (replica unreachable) time to clear.
    """

    attempts: int = 1
    backoff_s: float = 0.05
    max_backoff_s: float = 1.0
    deadline_s: float = 60.0

    @classmethod
    def for_worker(cls, worker: WorkerConfig, deadline_s: float) -> Failover:
        """Retries only when another replica can answer: at least two, always. With one, a retry
        would wait for the replacement replica (~15 s on CPU): the client is better told 503."""
        return cls(
            attempts=worker.failover_attempts if worker.min_replicas >= 2 else 1, deadline_s=deadline_s
        )

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1, 2, ...)."""
        return min(self.backoff_s * 2 ** (retry - 1), self.max_backoff_s)


NO_FAILOVER = Failover()


_FAILOVERS = None


def _count(worker: str, outcome: str) -> None:
    """``nexus_worker_failovers{worker, outcome}``: lost calls retried, or given up as a 503."""
    global _FAILOVERS
    if _FAILOVERS is None:  # created on first use: proxies also run where Ray's metrics are not up
        _FAILOVERS = metrics.Counter(
            "nexus_worker_failovers",
            "engine calls that lost their replica: retried on a live one, or given up (503)",
            tag_keys=("worker", "outcome"),
        )
    _FAILOVERS.inc(1, {"worker": worker, "outcome": outcome})


async def _call(worker: str, failover: Failover, call: Callable[[], Awaitable[T]], counts: Counter) -> T:
    """``call()`` (a fresh Serve call, identical arguments every time) with ``failover``'s retries;
    ``worker`` ("policy" or "PRM") names it in errors, logs and ``counts``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + failover.deadline_s
    for attempt in range(1, failover.attempts + 1):
        try:
            return await call()
        except RayTaskError:
            raise  # our own code failed in the worker: the same call would fail again
        except (RayError, RayServeException) as err:  # the replica died, is unreachable or shed it
            wait = failover.delay(attempt)
            last = attempt == failover.attempts or loop.time() + wait >= deadline
            cancelled = isinstance(err, TaskCancelledError)  # not lost: nobody waits for the answer
            outcome = "unavailable" if last or cancelled else "retried"
            counts[outcome] += 1
            _count(worker, outcome)
            if outcome == "unavailable":
                raise WorkerUnavailable(
                    f"the {worker} worker is unavailable ({type(err).__name__}); retry shortly"
                ) from err
            logger.warning(
                "the %s worker lost a call (%s); retry %d of %d on a live replica in %.2f s",
                worker,
                type(err).__name__,
                attempt,
                failover.attempts - 1,
                wait,
            )
            await asyncio.sleep(wait)
    raise AssertionError("unreachable: failover.attempts >= 1")


class _Remote:
    def __init__(self, handle, info: WorkerInfo, failover: Failover = NO_FAILOVER) -> None:
        self.handle = handle
        self.model_name = info.model_name
        self.num_parameters = info.num_parameters
        self.prefix_caching = info.prefix_caching  # the ledger charges what the engine computes
        self.merge_probe_models = info.merge_probe_models
        self.failover = failover
        self.counts: Counter[str] = Counter()  # lost calls "retried", and given up as "unavailable"

    def shutdown(self) -> None:
        """The worker owns the model; a proxy has nothing to release."""


class RemotePolicyEngine(_Remote):
    def __init__(self, handle, info: WorkerInfo, failover: Failover = NO_FAILOVER) -> None:
        super().__init__(handle, info, failover)
        self.tokenizer = AutoTokenizer.from_pretrained(info.model_path)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text).input_ids)

    async def generate(self, prompts: list[str], params: GenerationParams) -> list[GenerationResult]:
        # params carries the seed, so a retry on another replica samples exactly the same tokens
        return await _call(
            "policy",
            self.failover,
            lambda: self.handle.generate.remote(prompts, params),
            self.counts,
        )


class RemoteRewardEngine(_Remote):
    async def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        return await _call("PRM", self.failover, lambda: self.handle.score.remote(requests), self.counts)


def failovers(config: ServiceConfig | None) -> tuple[Failover, Failover]:
    """The policy's and the PRM's failover under a service config (None: no retries)."""
    if config is None:
        return NO_FAILOVER, NO_FAILOVER
    return (
        Failover.for_worker(config.policy_worker, config.request_timeout_s),
        Failover.for_worker(config.prm_worker, config.request_timeout_s),
    )


async def connect(
    policy_handle, prm_handle, config: ServiceConfig | None = None
) -> tuple[RemotePolicyEngine, RemoteRewardEngine]:
    """Proxies for two worker deployments (waits until both answer); ``config``: the service's,
    which says how many replicas each worker runs and so whether a lost call is retried."""
    policy_failover, prm_failover = failovers(config)
    counts: Counter[str] = Counter()
    policy_info, prm_info = await asyncio.gather(
        _call("policy", policy_failover, lambda: policy_handle.info.remote(), counts),
        _call("PRM", prm_failover, lambda: prm_handle.info.remote(), counts),
    )
    return (
        RemotePolicyEngine(policy_handle, policy_info, policy_failover),
        RemoteRewardEngine(prm_handle, prm_info, prm_failover),
    )
