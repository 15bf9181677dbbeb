"""A hard cap on the tokens of any one solution, for every strategy at once.

OpenAI's ``max_completion_tokens`` limits what a solution may hold. Sampling strategies
generate a solution in one call, tree strategies step by step (each call continues ``prompt +
path``); ``CappedPolicy`` sits between either and the engine and gives every call only what its
solution has left, so no strategy needs to know about the cap.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from nexus_ray.engines.base import (
    Completion,
    GenerationParams,
    GenerationResult,
    PolicyEngine,
    prompt_seed,
)


class CappedPolicy:
    """``policy`` with every solution after ``prompt`` held to ``cap`` tokens (finish_reason
    ``length`` when a call has nothing left)."""

    def __init__(self, policy: PolicyEngine, prompt: str, cap: int) -> None:
        self.policy, self.prompt, self.cap = policy, prompt, cap
        self.model_name = policy.model_name
        self.num_parameters = policy.num_parameters
        self.merge_probe_models = getattr(policy, "merge_probe_models", 0)
        self._prompt_tokens = policy.count_tokens(prompt)

    def count_tokens(self, text: str) -> int:
        return self.policy.count_tokens(text)

    def left(self, text: str) -> int:
        """Tokens the solution ``text`` continues may still take."""
        if not text.startswith(self.prompt) or text == self.prompt:
            return self.cap
        return self.cap - max(0, self.policy.count_tokens(text) - self._prompt_tokens)

    async def generate(self, prompts: list[str], params: GenerationParams) -> list[GenerationResult]:
        limits = [min(params.max_tokens, self.left(p)) for p in prompts]
        if all(limit == params.max_tokens for limit in limits):
            return await self.policy.generate(prompts, params)
        # Each prompt on its own, with the seed it had as prompt i of one call: same samples.
        return list(
            await asyncio.gather(
                *(
                    self._one(p, replace(params, seed=prompt_seed(params.seed, i), max_tokens=limit))
                    for i, (p, limit) in enumerate(zip(prompts, limits))
                )
            )
        )

    async def _one(self, prompt: str, params: GenerationParams) -> GenerationResult:
        if params.max_tokens <= 0:
            empty = Completion(
                "",
                (),
                "length",
                () if params.logprobs else None,
                top_logprobs=() if params.top_logprobs else None,
            )
            return GenerationResult(prompt, 0, (empty,) * params.n)
        [result] = await self.policy.generate([prompt], params)
        return result

    def shutdown(self) -> None:
        """The wrapped engine belongs to the caller."""
