"""A policy engine that merges its experts per prompt (T3) or per batch before generating.

The engine holds the base and every expert for their forward passes over the prompts, and one
more copy of the base, the served model, whose weights are overwritten in place with each
merge. Per call: every distinct prompt is read by the base and each expert (their next-token
distributions at its last token), the coefficients follow (``nexus_ray.merge.t3``), the weights
are merged with ``nexus_ray.merge``'s task arithmetic, and the served model generates. ``t3``
merges once per distinct prompt (its samples share the merge), ``t3_batch`` once per engine
batch. Step-wise strategies send the problem with the steps so far, so each step's prompt gets
its own coefficients.

Each result's ``merge_probe_tokens`` is what the coefficients cost: (1 + experts) x its prompt
tokens, in policy tokens (task arithmetic needs identical shapes, so every model costs what the
policy costs per token). The served model's prefix cache is off: cached KV would be stale after
the next merge. ``timings`` accumulates seconds spent on coefficients, merges and generation.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from nexus_ray.config import T3MergeConfig
from nexus_ray.engines.base import GenerationParams, GenerationResult, prompt_seed
from nexus_ray.engines.batching import MicroBatcher
from nexus_ray.engines.hf import HFPolicyEngine, left_padded
from nexus_ray.engines.tokens import prompt_ids
from nexus_ray.merge.run import merge_into
from nexus_ray.merge.t3 import coefficients, divergences, merge_weights, scaled_static


class T3PolicyEngine:
    """``PolicyEngine`` over a base and experts merged at test time."""

    def __init__(
        self,
        base_path: str | Path,
        expert_paths: list[Path],
        merge: T3MergeConfig,
        device: str | None = None,
        dtype: str = "float32",
        max_batch_size: int = 256,
        config_overrides: dict | None = None,
    ) -> None:
        self.served = HFPolicyEngine(base_path, device, dtype, max_batch_size, config_overrides, 0)
        self.merge = merge
        self.model_name = f"{self.served.model_name}+t3"
        self.num_parameters = self.served.num_parameters
        self.tokenizer = self.served.tokenizer
        self.prefix_caching = False
        self.merge_probe_models = 1 + len(expert_paths)  # read every prompt for the coefficients
        torch_dtype = self.served.model.dtype
        self.models = [
            AutoModelForCausalLM.from_pretrained(p, config=self.served.model.config, dtype=torch_dtype)
            .to(self.served.device)
            .eval()
            for p in [Path(base_path), *expert_paths]
        ]
        names = dict(self.served.model.named_parameters())
        self.weights = [{n: p.detach() for n, p in m.named_parameters()} for m in self.models]
        for path, w in zip(expert_paths, self.weights[1:]):
            if {n: t.shape for n, t in w.items()} != {n: p.shape for n, p in names.items()}:
                raise ValueError(f"expert {path} does not have the base's parameters and shapes")
        self.static = _static_config(merge.static, Path(base_path), expert_paths) if merge.static else None
        self.current: tuple[float, ...] | None = None  # the coefficients the served weights hold
        self.timings: Counter[str] = Counter()
        self.merges = 0
        self._lock = threading.Lock()
        self._batcher = MicroBatcher(lambda params, items: self._run(params, items))

    def count_tokens(self, text: str) -> int:
        return self.served.count_tokens(text)

    def shutdown(self) -> None:
        """Nothing to stop: the models live in this process and go with it."""

    async def generate(self, prompts: list[str], params: GenerationParams) -> list[GenerationResult]:
        """Concurrent calls with the same sampling parameters share one batch (one merge in t3_batch)."""
        items = [(p, prompt_seed(params.seed, i)) for i, p in enumerate(prompts)]
        return await self._batcher.submit(replace(params, seed=None), items)

    def generate_sync(self, prompts: list[str], params: GenerationParams) -> list[GenerationResult]:
        return self._run(params, [(p, prompt_seed(params.seed, i)) for i, p in enumerate(prompts)])

    def coefficients(self, prompts: list[str]) -> list[tuple[float, ...]]:
        """Each prompt's coefficients, one per expert (in t3_batch, the batch's, repeated)."""
        with self._lock, torch.inference_mode():
            return self._coefficients(prompts)

    def _coefficients(self, prompts: list[str]) -> list[tuple[float, ...]]:
        start = time.perf_counter()
        encoded = [prompt_ids(self.tokenizer, p) for p in prompts]
        logits = [_last_logits(m, encoded, self.tokenizer, self.served.device) for m in self.models]
        js = divergences(logits[0], logits[1:])
        m = self.merge
        lambdas = coefficients(js, m.lambda_min, m.lambda_max, m.gamma, m.method == "t3_batch")
        self.timings["coefficients"] += time.perf_counter() - start
        return [tuple(round(float(x), 6) for x in row) for row in lambdas]

    def _merge_into_served(self, lambdas: tuple[float, ...]) -> None:
        """Overwrite the served model's weights with the merge at ``lambdas`` (unless it holds it)."""
        if lambdas == self.current:
            return
        start = time.perf_counter()
        if self.static is not None:
            merge_into(self.served.model, scaled_static(self.static, lambdas))
        else:
            merged = merge_weights(self.weights[0], self.weights[1:], lambdas, self.merge.normalize)
            for name, p in self.served.model.named_parameters():
                p.data.copy_(merged[name])
        self.current = lambdas
        self.merges += 1
        self.timings["merge"] += time.perf_counter() - start

    def _run(self, params: GenerationParams, items: list[tuple[str, int | None]]) -> list[GenerationResult]:
        """One engine batch: coefficients for its distinct prompts, then one merge and one
        generation per distinct coefficient vector (t3_batch: one for all)."""
        prompts = [p for p, _ in items]
        distinct = list(dict.fromkeys(prompts))
        probes = len(self.models)  # the base and each expert read every distinct prompt
        results: list[GenerationResult | None] = [None] * len(items)
        with self._lock, torch.inference_mode():
            lambdas = dict(zip(distinct, self._coefficients(distinct)))
            groups: dict[tuple[float, ...], list[int]] = {}
            for i, p in enumerate(prompts):
                groups.setdefault(lambdas[p], []).append(i)
            for coeffs, rows in groups.items():
                self._merge_into_served(coeffs)
                start = time.perf_counter()
                out = self.served.generate_seeded(
                    [prompts[i] for i in rows], [items[i][1] for i in rows], params
                )
                self.timings["generate"] += time.perf_counter() - start
                for i, r in zip(rows, out):
                    results[i] = r
        charged: set[str] = set()  # a prompt repeated in the batch was read once
        final = []
        for r in results:
            assert r is not None
            probe = 0 if r.prompt in charged else probes * r.prompt_tokens
            charged.add(r.prompt)
            final.append(replace(r, merge_probe_tokens=probe))
        return final


def _static_config(path: str, base: Path, experts: list[Path]) -> dict:
    """The static merge's config, checked to merge this engine's base and experts in its order."""
    from nexus_ray.merge.plan import MergeConfigError, build, load_config

    try:
        config = load_config(path)
        plan = build(config)
    except (MergeConfigError, OSError) as err:
        raise ValueError(f"merge.static {path}: {err}") from None
    want = (base.resolve(), [e.resolve() for e in experts])
    got = (plan.base.resolve() if plan.base else None, [m.resolve() for m in plan.models])
    if got != want:
        raise ValueError(
            f"merge.static {path} merges {got[0]} with {[str(m) for m in got[1]]}, but this engine's base "
            f"is {want[0]} and its experts {[str(e) for e in want[1]]} (same models, same order)"
        )
    return config


def _last_logits(model, encoded: list[list[int]], tokenizer, device: torch.device) -> torch.Tensor:
    """Next-token logits [B, V] at each prompt's last token (prompts left-padded)."""
    ids, mask = left_padded(encoded, tokenizer)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device))
    return out.logits[:, -1].float()
