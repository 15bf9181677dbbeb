"""What every strategy shares: the context it runs against, its parameter models, and the
worst-case price of one step-by-step round (for the budget check before each round)."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from nexus_ray.engines.base import PolicyEngine, RewardEngine
from nexus_ray.search.aggregate import Selection, StepAggregation
from nexus_ray.search.capped import CappedPolicy
from nexus_ray.search.ledger import Budget, ComputeLedger, worst_case_round
from nexus_ray.search.paths import Path
from nexus_ray.tasks.format import TaskFormat


class StrategyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_step_tokens: int = 64
    max_tokens: int = 256

    @classmethod
    def for_budget(cls, generations: int, **overrides) -> StrategyParams:
        """Parameters that spend about ``generations`` full samples."""
        return cls(**overrides)


class ScoredSearchParams(StrategyParams):
    """Knobs every strategy that reads PRM scores shares: how steps aggregate, how the answer is picked."""

    aggregation: StepAggregation = "last"
    selection: Selection = "weighted"


@dataclass
class SearchContext:
    """Everything a strategy runs against: engines, the prompt, its format, a ceiling, a seed."""

    policy: PolicyEngine
    prm: RewardEngine | None
    prompt: str
    fmt: TaskFormat
    budget: Budget | None = None
    seed: int | None = 0
    prefix_caching: bool = False
    messages: tuple[tuple[str, str], ...] = ()  # chat formats: the conversation, for the PRM's own template

    @classmethod
    def for_problem(
        cls,
        policy: PolicyEngine,
        prm: RewardEngine | None,
        fmt: TaskFormat,
        problem: str | tuple[tuple[str, str], ...],
        budget: Budget | None = None,
        seed: int | None = 0,
        prefix_caching: bool | None = None,
        max_tokens: int | None = None,
    ) -> SearchContext:
        """The context for a problem (text, or a conversation under a chat format) in ``fmt``;
        ``max_tokens``: a hard cap on the tokens of any solution (``CappedPolicy``);
        ``prefix_caching``: the ledger's mode, by default whether the policy engine caches."""
        if prefix_caching is None:
            prefix_caching = bool(getattr(policy, "prefix_caching", False))
        messages = fmt.messages(problem) if fmt.chat is not None else ()
        prompt = fmt.prompt(problem)
        if max_tokens is not None:
            policy = CappedPolicy(policy, prompt, max_tokens)
        return cls(policy, prm, prompt, fmt, budget, seed, prefix_caching, messages)

    def new_ledger(self) -> ComputeLedger:
        return ComputeLedger(
            self.policy.num_parameters,
            self.prm.num_parameters if self.prm else 0,
            prefix_caching=self.prefix_caching,
            prm_prefix_caching=bool(getattr(self.prm, "prefix_caching", False)),
            merge_probe_models=int(getattr(self.policy, "merge_probe_models", 0)),
        )

    def require_prm(self, strategy: str) -> RewardEngine:
        if self.prm is None:
            raise ValueError(f"strategy {strategy!r} needs a PRM")
        return self.prm

    def fits(self, ledger: ComputeLedger, worst_case: float) -> bool:
        return self.budget is None or self.budget.fits(ledger, worst_case)


def worst_case(
    ctx: SearchContext,
    ledger: ComputeLedger,
    paths: list[Path],
    samples_each: int,
    max_step_tokens: int,
    lookahead: int = 0,
) -> float:
    """Worst-case cost of expanding ``paths`` one step (plus a k-step rollout per child) and scoring."""
    prompt_tokens = [ctx.policy.count_tokens(ctx.prompt + p.text) for p in paths]
    rollout = 1 + lookahead
    return worst_case_round(ledger, prompt_tokens, samples_each * rollout, max_step_tokens * rollout, True)
