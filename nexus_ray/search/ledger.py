"""ComputeLedger and Budget: what a strategy spent, and what it may still spend.

FLOPs are 2 x parameters x tokens for each model (policy tokens generated and prefilled,
PRM tokens scored, the PRM's chat template included). Parameters are those a token's forward
pass multiplies by: every weight but the input embedding table (a lookup), which counts only
where it doubles as the output projection (tied embeddings); the engines count them so.
Budgets are in policy-token equivalents: FLOPs divided by the policy's FLOPs per token, so a
PRM token costs prm_parameters / policy_parameters policy tokens.

Prefill: a generate call charges each distinct prompt once (its n samples share the prefill).
With ``prefix_caching`` the ledger also remembers the prompts it has charged and charges a
later prompt only for the tokens past its longest previously charged prefix, which is what a
prefix-caching engine (vLLM, and the transformers engine's ``PrefixCache``) actually computes
when search extends a path step by step. With ``prm_prefix_caching`` (a PRM engine that reuses
scored steps: the transformers engine reading a ``local`` step checker, whose score of a step
depends on the step and the line before it only) a step is charged once per request, the first
time the PRM reads it after that line.

Test-time merging (``engines/t3.py``): the models that read a prompt to set its merge
coefficients are charged as ``merge_probe_tokens``, in policy tokens (every merged model has the
policy's shape), never prefix-cached.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from nexus_ray.engines.base import GenerationResult, ScoreRequest, ScoreResult

StepKeys = tuple[tuple[str, int], ...]  # per step: which (line before, step) it is, and its PRM tokens


def step_keys(request: ScoreRequest, result: ScoreResult) -> StepKeys:
    """Each scored step as (a short hash of the line before it and the step, its PRM tokens):
    what ``prm_prefix_caching`` dedups on, small enough for a recorded pool to keep; empty when
    the engine did not split its count by step."""
    if len(result.step_tokens) != len(request.steps):
        return ()
    befores = [request.prompt, *request.steps[:-1]]
    return tuple(
        (hashlib.blake2b(f"{b}\x00{s}".encode(), digest_size=6).hexdigest(), t)
        for b, s, t in zip(befores, request.steps, result.step_tokens)
    )


@dataclass
class ComputeLedger:
    policy_parameters: int
    prm_parameters: int = 0
    prefix_caching: bool = False
    prm_prefix_caching: bool = False
    merge_probe_models: int = 0  # a T3 policy: models that read each prompt for its coefficients
    policy_generated_tokens: int = 0
    policy_prefill_tokens: int = 0
    prm_tokens: int = 0
    merge_probe_tokens: int = 0
    generations: int = 0
    _cached_prompts: dict[str, int] = field(default_factory=dict, repr=False)
    _scored_steps: set[str] = field(default_factory=set, repr=False)

    def charge_generation(self, results: list[GenerationResult]) -> None:
        """Charge a generate call: each prompt's prefill once, every sampled token, and the
        test-time merge's reads of the prompt."""
        for r in results:
            self.charge_call(r.prompt, r.prompt_tokens, r.completion_tokens)
            self.merge_probe_tokens += r.merge_probe_tokens

    def charge_call(self, prompt: str, prompt_tokens: int, generated_tokens: int) -> None:
        """One prompt of a generate call, from its token counts (a replayed call charges this too)."""
        self.policy_prefill_tokens += self._uncached_prefill(prompt, prompt_tokens)
        self.policy_generated_tokens += generated_tokens

    def _uncached_prefill(self, prompt: str, prompt_tokens: int) -> int:
        """Prompt tokens past the longest prompt charged before (exact when a prompt's tokens
        start with its prefix's tokens, as with the zoo's character tokenizer)."""
        if not self.prefix_caching:
            return prompt_tokens
        cached = max((n for p, n in self._cached_prompts.items() if prompt.startswith(p)), default=0)
        self._cached_prompts[prompt] = prompt_tokens
        return max(0, prompt_tokens - cached)

    def charge_scoring(self, results: list[ScoreResult], requests: list[ScoreRequest] | None = None) -> None:
        """Every token the PRM read; with ``prm_prefix_caching`` (and the ``requests``) only the
        steps of each path it had not read before in this request."""
        if not self.prm_prefix_caching or requests is None:
            self.prm_tokens += sum(r.tokens for r in results)
            return
        for request, result in zip(requests, results):
            self.charge_recorded_scoring(result.tokens, step_keys(request, result))

    def charge_recorded_scoring(self, tokens: int, keys: Sequence[tuple[str, int]]) -> None:
        """One scored path from its counts (a replayed score charges this too): all ``tokens``,
        or with ``prm_prefix_caching`` and its ``keys`` (``step_keys``) only its unread steps."""
        if not self.prm_prefix_caching or not keys:
            self.prm_tokens += tokens
            return
        for key, step_tokens in keys:
            if key not in self._scored_steps:
                self._scored_steps.add(key)
                self.prm_tokens += step_tokens

    @property
    def prm_token_cost(self) -> float:
        """Policy-token equivalents of one PRM token."""
        return self.prm_parameters / self.policy_parameters

    @property
    def flops(self) -> int:
        policy_tokens = self.policy_generated_tokens + self.policy_prefill_tokens + self.merge_probe_tokens
        policy = 2 * self.policy_parameters * policy_tokens
        return policy + 2 * self.prm_parameters * self.prm_tokens

    @property
    def policy_token_equivalents(self) -> float:
        return self.flops / (2 * self.policy_parameters)

    def to_dict(self) -> dict[str, float | int]:
        return {
            "policy_generated_tokens": self.policy_generated_tokens,
            "policy_prefill_tokens": self.policy_prefill_tokens,
            "prm_tokens": self.prm_tokens,
            "merge_probe_tokens": self.merge_probe_tokens,
            "generations": self.generations,
            "flops": self.flops,
            "policy_token_equivalents": round(self.policy_token_equivalents, 1),
        }


@dataclass(frozen=True)
class Budget:
    """A ceiling in policy-token equivalents. Strategies ask before each round whether its
    worst case still fits; if not, they stop and return their best answer, truncated."""

    policy_tokens: float

    def __post_init__(self) -> None:
        if self.policy_tokens <= 0:
            raise ValueError(f"budget must be positive, got {self.policy_tokens}")

    def remaining(self, ledger: ComputeLedger) -> float:
        return self.policy_tokens - ledger.policy_token_equivalents

    def fits(self, ledger: ComputeLedger, worst_case: float) -> bool:
        return worst_case <= self.remaining(ledger)


def worst_case_round(
    ledger: ComputeLedger,
    prompt_tokens: list[int],
    samples_each: int,
    max_tokens: int,
    scored: bool,
) -> float:
    """Upper bound, in policy-token equivalents, of one round: prefill every prompt (and, for a
    T3 policy, its coefficient passes: ``merge_probe_models`` models read each prompt), sample
    ``samples_each`` x ``max_tokens`` per prompt, and (if ``scored``) have the PRM read every
    resulting path in full (a few tokens of slack per path for step separators)."""
    prefill = sum(prompt_tokens)
    generated = len(prompt_tokens) * samples_each * max_tokens
    cost = float(prefill * (1 + ledger.merge_probe_models) + generated)
    if scored:
        prm_read = sum((p + max_tokens + 8) * samples_each for p in prompt_tokens)
        cost += prm_read * ledger.prm_token_cost
    return cost
