"""ComputeLedger: what a strategy spent, in tokens and FLOPs, per model.

FLOPs are 2 x parameters x tokens for each model (policy tokens generated and prefilled,
PRM tokens scored). Budgets are expressed in policy-token equivalents: FLOPs divided by the
policy's FLOPs per token, so a PRM call costs what it would cost the policy.
"""

from __future__ import annotations

from dataclasses import dataclass

from nexus_ray.engines.base import GenerationResult, ScoreResult


@dataclass
class ComputeLedger:
    policy_parameters: int
    prm_parameters: int = 0
    policy_generated_tokens: int = 0
    policy_prefill_tokens: int = 0
    prm_tokens: int = 0
    generations: int = 0

    def charge_generation(self, results: list[GenerationResult]) -> None:
        """Charge a generate call: each prompt's prefill once (its samples share it) and every
        sampled token."""
        for r in results:
            self.policy_prefill_tokens += r.prompt_tokens
            self.policy_generated_tokens += r.completion_tokens

    def charge_scoring(self, results: list[ScoreResult]) -> None:
        self.prm_tokens += sum(r.tokens for r in results)

    @property
    def flops(self) -> int:
        policy = 2 * self.policy_parameters * (self.policy_generated_tokens + self.policy_prefill_tokens)
        return policy + 2 * self.prm_parameters * self.prm_tokens

    @property
    def policy_token_equivalents(self) -> float:
        return self.flops / (2 * self.policy_parameters)

    def to_dict(self) -> dict[str, float | int]:
        return {
            "policy_generated_tokens": self.policy_generated_tokens,
            "policy_prefill_tokens": self.policy_prefill_tokens,
            "prm_tokens": self.prm_tokens,
            "generations": self.generations,
            "flops": self.flops,
            "policy_token_equivalents": round(self.policy_token_equivalents, 1),
        }
