"""Serve deployments that hold the models, and proxies that make them look like local engines.

``PolicyWorker`` and ``RewardWorker`` each wrap one engine built from config (``hf`` or
``vllm``). Concurrent calls from many solves are merged into engine batches: the HF engine
merges calls that arrive while it is busy (``MicroBatcher``, the equivalent of
``@serve.batch`` that also groups by sampling parameters), vLLM's async engine batches
continuously. ``batching: false`` serialises calls instead, the baseline the throughput
benchmark compares against.

``RemotePolicyEngine`` / ``RemoteRewardEngine`` implement the engine protocols over a
deployment handle, so the search code runs unchanged against remote workers. A worker that
dies or sheds load surfaces as ``WorkerUnavailable`` (HTTP 503, retryable), never as a hang
or a wrong answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import ray
from ray import serve
from ray.exceptions import RayError, RayTaskError
from ray.serve.exceptions import RayServeException
from transformers import AutoTokenizer

from nexus_ray.config import EngineConfig, RewardConfig, WorkerConfig
from nexus_ray.engines import build_policy_engine, build_reward_engine
from nexus_ray.engines.base import GenerationParams, GenerationResult, ScoreRequest, ScoreResult
from nexus_ray.zoo.registry import resolve


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


@contextlib.contextmanager
def _unavailable_on_failure(what: str):
    """Errors raised by our own code in the worker propagate; losing the worker is a 503."""
    try:
        yield
    except RayTaskError:
        raise
    except (RayError, RayServeException) as err:
        raise WorkerUnavailable(f"{what} is unavailable ({type(err).__name__}); retry shortly") from err


class _Remote:
    def __init__(self, handle, info: WorkerInfo) -> None:
        self.handle = handle
        self.model_name = info.model_name
        self.num_parameters = info.num_parameters

    def shutdown(self) -> None:
        """The worker owns the model; a proxy has nothing to release."""


class RemotePolicyEngine(_Remote):
    def __init__(self, handle, info: WorkerInfo) -> None:
        super().__init__(handle, info)
        self.tokenizer = AutoTokenizer.from_pretrained(info.model_path)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text).input_ids)

    async def generate(self, prompts: list[str], params: GenerationParams) -> list[GenerationResult]:
        with _unavailable_on_failure("the policy worker"):
            return await self.handle.generate.remote(prompts, params)


class RemoteRewardEngine(_Remote):
    async def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        with _unavailable_on_failure("the PRM worker"):
            return await self.handle.score.remote(requests)


async def connect(policy_handle, prm_handle) -> tuple[RemotePolicyEngine, RemoteRewardEngine]:
    """Proxies for two worker deployments (waits until both answer)."""
    with _unavailable_on_failure("a model worker"):
        policy_info, prm_info = await asyncio.gather(policy_handle.info.remote(), prm_handle.info.remote())
    return RemotePolicyEngine(policy_handle, policy_info), RemoteRewardEngine(prm_handle, prm_info)
