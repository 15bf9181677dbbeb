"""The transformers engine: policy sampling and PRM scoring on CPU or GPU.

Sampling is a hand-written decode loop over the model's KV cache rather than
``model.generate`` because the protocol needs per-sample seeds that do not depend on the rest
of the batch, stop strings kept in the output, raw-model logprobs (the k largest too),
exact token counts, and DeepConf's confidence stop checked token by token.
Each distinct prompt is prefilled once and its cache is shared by its ``n`` samples.
Concurrent async calls are merged into one batch (``MicroBatcher``).
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForTokenClassification,
    AutoTokenizer,
    DynamicCache,
)

from nexus_ray.config import QWEN_MATH_SYSTEM_PROMPT, PrmFormat
from nexus_ray.engines.base import (
    Completion,
    GenerationParams,
    GenerationResult,
    ScoreRequest,
    ScoreResult,
    prompt_seed,
    token_confidence,
)
from nexus_ray.engines.batching import MicroBatcher
from nexus_ray.engines.prefix_cache import CachedPrompt, PieceCache, PrefixCache
from nexus_ray.engines.prm_format import STEP_POOLER_ARCHITECTURES, build_encoder, results_of
from nexus_ray.engines.qwen2_prm import Qwen2ForProcessRewardModel
from nexus_ray.engines.tokens import prompt_ids

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _load(
    engine, auto_class, model_path: str | Path, device: str | None, dtype: str, overrides: dict | None
) -> None:
    """Load tokenizer and model onto the engine: the same for the policy and the PRM.

    ``overrides`` replace config keys before the model is built (vLLM's ``hf_overrides``).
    """
    engine.model_path = Path(model_path)
    engine.model_name = engine.model_path.name
    engine.device = _device(device)
    engine.tokenizer = AutoTokenizer.from_pretrained(engine.model_path)
    config = AutoConfig.from_pretrained(engine.model_path)
    for key, value in (overrides or {}).items():
        setattr(config, key, value)
    if any(a in STEP_POOLER_ARCHITECTURES for a in config.architectures or []):
        auto_class = Qwen2ForProcessRewardModel  # transformers has no class for it (see qwen2_prm)
    engine.model = (
        auto_class.from_pretrained(engine.model_path, config=config, dtype=_DTYPES[dtype])
        .to(engine.device)
        .eval()
    )
    engine.num_parameters = _flop_parameters(engine.model)


def _flop_parameters(model: torch.nn.Module) -> int:
    """Parameters a token's forward pass multiplies by (see ``ComputeLedger``): all but the
    input embedding table, a lookup, unless it doubles as the output projection (tied)."""
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = output is not None and output.weight is embedding
    return total if tied else total - embedding.numel()


class HFPolicyEngine:
    """A causal LM from a model directory (zoo or any HF checkpoint)."""

    def __init__(
        self,
        model_path: str | Path,
        device: str | None = None,
        dtype: str = "float32",
        max_batch_size: int = 256,
        config_overrides: dict | None = None,
        prefix_cache_tokens: int = 0,
    ) -> None:
        _load(self, AutoModelForCausalLM, model_path, device, dtype, config_overrides)
        self.max_batch_size = max_batch_size
        self.prefix_cache = PrefixCache(prefix_cache_tokens) if prefix_cache_tokens > 0 else None
        self.prefix_caching = self.prefix_cache is not None  # the ledger charges what this computes
        self.prefill_tokens = 0  # prompt tokens run through the model, all calls together
        self.max_positions = getattr(self.model.config, "max_position_embeddings", None)
        self._lock = threading.Lock()
        self._batcher = MicroBatcher(
            lambda params, items: self.generate_seeded([p for p, _ in items], [s for _, s in items], params)
        )

    def count_tokens(self, text: str) -> int:
        return len(prompt_ids(self.tokenizer, text))

    def shutdown(self) -> None:
        """Nothing to stop: the model lives in this process and goes with it."""

    async def generate(self, prompts: list[str], params: GenerationParams) -> list[GenerationResult]:
        """Concurrent calls with the same sampling parameters (seeds aside) share one batch."""
        items = [(p, prompt_seed(params.seed, i)) for i, p in enumerate(prompts)]
        return await self._batcher.submit(replace(params, seed=None), items)

    def generate_sync(self, prompts: list[str], params: GenerationParams) -> list[GenerationResult]:
        seeds = [prompt_seed(params.seed, i) for i in range(len(prompts))]
        return self.generate_seeded(prompts, seeds, params)

    def generate_seeded(
        self, prompts: list[str], seeds: list[int | None], params: GenerationParams
    ) -> list[GenerationResult]:
        """Blocking generation in chunks of ``max_batch_size`` samples; prompt i uses seeds[i]."""
        encoded = [prompt_ids(self.tokenizer, p) for p in prompts]
        per_chunk = max(1, self.max_batch_size // params.n)
        results: list[GenerationResult] = []
        with self._lock, torch.inference_mode():
            for start in range(0, len(prompts), per_chunk):
                chunk = list(range(start, min(start + per_chunk, len(prompts))))
                completions = self._decode([encoded[i] for i in chunk], [seeds[i] for i in chunk], params)
                for k, i in enumerate(chunk):
                    results.append(GenerationResult(prompts[i], len(encoded[i]), tuple(completions[k])))
        return results

    def _decode(
        self, encoded: list[list[int]], seeds: list[int | None], params: GenerationParams
    ) -> list[list[Completion]]:
        tok = self.tokenizer
        n = params.n
        width = max(map(len, encoded))
        if self.max_positions and width + params.max_tokens > self.max_positions:
            limit = self.max_positions - width
            if limit < 1:
                raise ValueError(
                    f"prompt of {width} tokens does not fit the model's context of {self.max_positions}"
                )
            params = GenerationParams(**{**params.__dict__, "max_tokens": limit})
        if self.prefix_cache is None:
            cache, logits, mask = self._prefill(encoded)
        else:
            cache, logits, mask = self._prefill_cached(encoded)
        next_pos = torch.tensor([[len(p) - 1] for p in encoded], device=self.device)
        if n > 1:  # one prefill per distinct prompt, shared by its n samples
            cache.batch_repeat_interleave(n)
            logits = logits.repeat_interleave(n, dim=0)
            mask = mask.repeat_interleave(n, dim=0)
            next_pos = next_pos.repeat_interleave(n, dim=0)
        rows = logits.shape[0]
        generators = []
        for r in range(rows):
            base = seeds[r // n]
            g = torch.Generator(device=self.device)
            g.manual_seed(base + r % n if base is not None else int(torch.randint(0, 2**62, (1,)).item()))
            generators.append(g)

        eos = set(_eos_ids(self.model, tok))
        confidence_stop = params.confidence_stop
        top_k = min(
            logits.shape[-1], max(params.top_logprobs, confidence_stop.top_k if confidence_stop else 0)
        )
        tokens: list[list[int]] = [[] for _ in range(rows)]
        logps: list[list[float]] = [[] for _ in range(rows)]
        tops: list[list[tuple[float, ...]]] = [[] for _ in range(rows)]
        confidences: list[list[float]] = [[] for _ in range(rows)]
        finish: list[tuple[str, str | None] | None] = [None] * rows
        texts = [""] * rows
        for _ in range(params.max_tokens):
            chosen = self._pick(logits, params, generators)
            log_probs = torch.log_softmax(logits, dim=-1)
            logprob = log_probs.gather(1, chosen[:, None])[:, 0]
            top = log_probs.topk(top_k, dim=-1).values.tolist() if top_k else None
            for r in range(rows):
                if finish[r] is not None:
                    continue
                t = int(chosen[r])
                tokens[r].append(t)  # EOS included: it was sampled and is charged, as in vLLM
                logps[r].append(float(logprob[r]))
                if top is not None:
                    tops[r].append(tuple(top[r]))
                if t in eos:
                    finish[r] = ("stop", None)
                    continue
                if params.stop:
                    texts[r] = tok.decode(tokens[r], skip_special_tokens=True)
                    hit = next((s for s in params.stop if s in texts[r]), None)
                    if hit is not None:
                        finish[r] = ("stop", hit)
                        continue
                if confidence_stop is not None:
                    confidences[r].append(token_confidence(tops[r][-1][: confidence_stop.top_k]))
                    if confidence_stop.stops(confidences[r]):
                        finish[r] = ("confidence", None)
            if all(f is not None for f in finish):
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            next_pos = next_pos + 1
            out = self.model(
                input_ids=chosen[:, None],
                attention_mask=mask,
                position_ids=next_pos,
                past_key_values=cache,
                use_cache=True,
            )
            cache = out.past_key_values
            logits = out.logits[:, -1].float()

        results: list[list[Completion]] = [[] for _ in encoded]
        for r in range(rows):
            reason, stop_str = finish[r] or ("length", None)
            ids_r = tokens[r]
            text = tok.decode(ids_r, skip_special_tokens=True)
            if stop_str is not None:  # cut anything past the stop string (multi-char tokens)
                text = text[: text.index(stop_str) + len(stop_str)]
            results[r // n].append(
                Completion(
                    text=text,
                    token_ids=tuple(ids_r),
                    finish_reason=reason,  # type: ignore[arg-type]
                    logprobs=tuple(logps[r]) if params.logprobs else None,
                    stop_reason=stop_str,
                    top_logprobs=tuple(t[: params.top_logprobs] for t in tops[r])
                    if params.top_logprobs
                    else None,
                )
            )
        return results

    def _prefill(self, encoded: list[list[int]]) -> tuple[DynamicCache, torch.Tensor, torch.Tensor]:
        """Every prompt from its first token, left-padded so every last token is aligned."""
        ids, mask = left_padded(encoded, self.tokenizer)
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        self.prefill_tokens += sum(map(len, encoded))
        return out.past_key_values, out.logits[:, -1].float(), mask

    def _prefill_cached(self, encoded: list[list[int]]) -> tuple[DynamicCache, torch.Tensor, torch.Tensor]:
        """Each distinct prompt only past its longest cached prefix (``PrefixCache``).

        Row u's cached KV goes right-aligned into the first ``P`` positions, its uncached
        suffix right-aligned into the last ``S``; the mask marks both, so padding may sit in
        the middle of a row. A prompt cached whole computes nothing. New prompts are cached.
        """
        assert self.prefix_cache is not None
        unique = list(dict.fromkeys(tuple(p) for p in encoded))
        hits = [self.prefix_cache.longest(list(u)) for u in unique]
        past = max(n for n, _ in hits)
        suffix = max(len(u) - n for u, (n, _) in zip(unique, hits))
        layers = self.model.config.num_hidden_layers
        cache = DynamicCache()
        past_mask = torch.zeros((len(unique), past), dtype=torch.long, device=self.device)
        if past:
            like = next(e for _, e in hits if e is not None)
            heads, dim = like.keys[0].shape[0], like.keys[0].shape[2]
            keys = [like.keys[0].new_zeros((len(unique), heads, past, dim)) for _ in range(layers)]
            values = [like.keys[0].new_zeros((len(unique), heads, past, dim)) for _ in range(layers)]
            for u, (n, entry) in enumerate(hits):
                if entry is None:
                    continue
                past_mask[u, past - n :] = 1
                for i in range(layers):
                    keys[i][u, :, past - n :] = entry.keys[i]
                    values[i][u, :, past - n :] = entry.values[i]
            for i in range(layers):
                cache.update(keys[i], values[i], i)
        logits = torch.zeros((len(unique), self.model.config.vocab_size), device=self.device)
        mask = past_mask
        if suffix:
            tok = self.tokenizer
            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            ids = torch.full((len(unique), suffix), pad, dtype=torch.long)
            new_mask = torch.zeros_like(ids)
            positions = torch.zeros_like(ids)
            for u, (prompt, (n, _)) in enumerate(zip(unique, hits)):
                rest = len(prompt) - n
                if rest:
                    ids[u, suffix - rest :] = torch.tensor(prompt[n:])
                    new_mask[u, suffix - rest :] = 1
                    positions[u, suffix - rest :] = torch.arange(n, len(prompt))
            mask = torch.cat([past_mask, new_mask.to(self.device)], dim=1)
            out = self.model(
                input_ids=ids.to(self.device),
                attention_mask=mask,
                position_ids=positions.to(self.device),
                past_key_values=cache if past else None,
                use_cache=True,
            )
            cache = out.past_key_values
            logits = out.logits[:, -1].float()
            self.prefill_tokens += sum(len(u) - n for u, (n, _) in zip(unique, hits))
        valid = mask.bool()
        for u, (prompt, (n, entry)) in enumerate(zip(unique, hits)):
            if n == len(prompt):
                assert entry is not None
                logits[u] = entry.logits
                continue
            layer_kv = [cache.layers[i] for i in range(layers)]
            self.prefix_cache.put(
                list(prompt),
                CachedPrompt(
                    tuple(layer.keys[u][:, valid[u]].clone() for layer in layer_kv),
                    tuple(layer.values[u][:, valid[u]].clone() for layer in layer_kv),
                    logits[u].clone(),
                ),
            )
        where = {u: k for k, u in enumerate(unique)}
        rows = torch.tensor([where[tuple(p)] for p in encoded], device=self.device)
        cache.batch_select_indices(rows)
        return cache, logits[rows], mask[rows]

    @staticmethod
    def _pick(
        logits: torch.Tensor, params: GenerationParams, generators: list[torch.Generator]
    ) -> torch.Tensor:
        if params.temperature == 0:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits / params.temperature, dim=-1)
        if params.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < params.top_p
            sorted_p = sorted_p * keep
            probs = torch.zeros_like(probs).scatter(1, order, sorted_p)
            probs = probs / probs.sum(-1, keepdim=True)
        return torch.stack([torch.multinomial(probs[r], 1, generator=g)[0] for r, g in enumerate(generators)])


def left_padded(encoded: list[list[int]], tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of prompts left-padded to one width, so every prompt's
    last token is in the last column."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(map(len, encoded))
    ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(encoded):
        ids[r, width - len(p) :] = torch.tensor(p)
        mask[r, width - len(p) :] = 1
    return ids, mask


def _eos_ids(model, tokenizer) -> list[int]:
    eos = model.generation_config.eos_token_id if model.generation_config else None
    if eos is None:
        eos = tokenizer.eos_token_id
    return eos if isinstance(eos, list) else [eos]


def rederive_logits(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A token classifier's own language-model reading: its final hidden states times its
    tied embedding table, the next-token logits at every position."""
    hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    return hidden @ model.get_input_embeddings().weight.T


def rederive_probabilities(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """P(token t | tokens before it) under ``rederive_logits``; 1 at the first position."""
    logp = torch.log_softmax(rederive_logits(model, ids, mask).float(), dim=-1)
    written = logp[:, :-1].gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1).exp()
    return torch.cat([torch.ones_like(written[:, :1]), written], dim=1)


class HFRewardEngine:
    """A PRM in either format of ``prm_format``: P(positive) where each step is scored.

    ``token``: a ``*ForTokenClassification`` model read at the separator ending each step (the
    zoo PRM; what vLLM's token-classify pooling returns). ``qwen-prm``: Qwen2.5-Math-PRM's
    chat-templated input read at every ``<extra_0>`` (what vLLM's step pooler returns).
    ``local``: a sequence per step; with ``prm_local_score: rederive``, a step's score is the
    product of ``rederive_probabilities`` over the tokens the checker re-derives.
    """

    def __init__(
        self,
        model_path: str | Path,
        device: str | None = None,
        dtype: str = "float32",
        step_delimiter: str = "\n",
        max_batch_size: int = 128,
        positive_label: int = 1,
        config_overrides: dict | None = None,
        prm_format: PrmFormat = "auto",
        step_tag: str = "<extra_0>",
        system_prompt: str = QWEN_MATH_SYSTEM_PROMPT,
        cache_tokens: int = 0,
    ) -> None:
        _load(self, AutoModelForTokenClassification, model_path, device, dtype, config_overrides)
        self.encoder = build_encoder(
            self.tokenizer,
            self.model.config,
            str(self.model_path),
            prm_format,
            step_delimiter,
            step_tag,
            system_prompt,
            positive_label,
        )
        self.positive_label = positive_label
        self.max_batch_size = max_batch_size
        self.rederive = self.encoder.local_score == "rederive"
        if self.rederive:  # it also runs the output projection (the tied embedding table)
            self.num_parameters += self.model.get_input_embeddings().weight.numel()
        # Format local only: its sequences are whole steps, exact to reuse (``PieceCache``).
        local = self.encoder.format == "local" and cache_tokens > 0
        self.piece_cache = PieceCache(cache_tokens) if local else None
        self.prefix_caching = self.piece_cache is not None  # the ledger charges each step once
        self.scored_tokens = 0  # tokens run through the model, all calls together
        self._lock = threading.Lock()
        self._batcher = MicroBatcher(lambda _key, requests: self.score_sync(requests))

    def shutdown(self) -> None:
        """Nothing to stop: the model lives in this process and goes with it."""

    async def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        """Concurrent calls are scored together in one batch."""
        return await self._batcher.submit(None, requests)

    def score_sync(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        """Requests are scored in chunks of similar length (little padding), results in order."""
        pieces = [self.encoder.pieces(r) for r in requests]
        encoded = [piece for p in pieces for piece in p]
        scored: list[list[float]] = [[] for _ in encoded]
        todo = list(range(len(encoded)))
        with self._lock, torch.inference_mode():
            if self.piece_cache is not None:
                for i in todo:
                    scored[i] = self.piece_cache.get(encoded[i][0]) or []
                todo = list({tuple(encoded[i][0]): i for i in todo if not scored[i]}.values())
            self._run([encoded[i] for i in todo], [scored[i] for i in todo])
            if self.piece_cache is not None:
                for i in todo:
                    self.piece_cache.put(encoded[i][0], scored[i])
                for i, (ids, _) in enumerate(encoded):  # repeats within the call
                    scored[i] = scored[i] or self.piece_cache.get(ids) or []
        return results_of(self.encoder, pieces, scored)

    def _run(self, encoded: list, into: list[list[float]]) -> None:
        """Score ``encoded`` (ids, ends) into the lists of ``into``, chunked by length."""
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
        pad = self.tokenizer.pad_token_id or 0
        self.scored_tokens += sum(len(ids) for ids, _ in encoded)
        for start in range(0, len(order), self.max_batch_size):
            positions = order[start : start + self.max_batch_size]
            chunk = [encoded[i] for i in positions]
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, (row, _) in enumerate(chunk):
                ids[r, : len(row)] = torch.tensor(row)
                mask[r, : len(row)] = 1
            if self.rederive:
                written = rederive_probabilities(self.model, ids.to(self.device), mask.to(self.device)).cpu()
                for r, (i, (_, ends)) in enumerate(zip(positions, chunk)):
                    into[i][:] = [float(written[r, ends].prod())]
                continue
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            probs = torch.softmax(logits.float(), dim=-1)[..., self.positive_label].cpu()
            for r, (i, (_, ends)) in enumerate(zip(positions, chunk)):
                into[i][:] = [float(probs[r, e]) for e in ends]
