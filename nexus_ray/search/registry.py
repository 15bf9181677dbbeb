"""Strategies by name, each with a typed parameter model, so configs, the CLI and the API
name them the same way.

A strategy is ``async def run(ctx: SearchContext, params) -> SearchResult``. Its parameter
model says how a budget in generations (Snell et al.'s unit) maps to its own knobs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from nexus_ray.engines.base import PolicyEngine, RewardEngine
from nexus_ray.search.aggregate import Selection, StepAggregation
from nexus_ray.search.ledger import Budget, ComputeLedger
from nexus_ray.search.result import SearchResult
from nexus_ray.tasks.format import TaskFormat


class StrategyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_step_tokens: int = 64
    max_tokens: int = 256

    @classmethod
    def for_budget(cls, generations: int, **overrides) -> "StrategyParams":
        """Parameters that spend about ``generations`` full samples."""
        return cls(**overrides)


class ScoredSearchParams(StrategyParams):
    """Knobs every strategy that reads PRM scores shares: how steps aggregate, how the answer is picked."""

    aggregation: StepAggregation = "last"
    selection: Selection = "weighted"


P = TypeVar("P", bound=StrategyParams)


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

    def new_ledger(self) -> ComputeLedger:
        return ComputeLedger(
            self.policy.num_parameters,
            self.prm.num_parameters if self.prm else 0,
            prefix_caching=self.prefix_caching,
        )

    def require_prm(self, strategy: str) -> RewardEngine:
        if self.prm is None:
            raise ValueError(f"strategy {strategy!r} needs a PRM")
        return self.prm

    def fits(self, ledger: ComputeLedger, worst_case: float) -> bool:
        return self.budget is None or self.budget.fits(ledger, worst_case)


@dataclass(frozen=True)
class Strategy(Generic[P]):
    name: str
    params: type[P]
    run: Callable[[SearchContext, P], Awaitable[SearchResult]]
    needs_prm: bool


STRATEGIES: dict[str, Strategy] = {}


def register(name: str, params: type[P], needs_prm: bool):
    def wrap(fn: Callable[[SearchContext, P], Awaitable[SearchResult]]):
        STRATEGIES[name] = Strategy(name, params, fn, needs_prm)
        return fn

    return wrap


# Names the literature uses for a strategy with fixed parameters.
ALIASES: dict[str, tuple[str, dict]] = {
    "majority": ("best_of_n", {"selection": "majority"}),
    "weighted": ("best_of_n", {"selection": "weighted"}),
}


def get(name: str) -> tuple[Strategy, dict]:
    """The strategy a name (or alias) stands for, and the parameters the alias fixes."""
    _load_all()
    base, fixed = ALIASES.get(name, (name, {}))
    if base not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}: choose from {', '.join(names())}")
    return STRATEGIES[base], fixed


def build_params(name: str, generations: int | None, overrides: dict | None = None) -> tuple[Strategy, StrategyParams]:
    """A strategy and its parameters for a budget in generations (None: its defaults)."""
    strategy, fixed = get(name)
    merged = {**fixed, **(overrides or {})}
    if generations is None:
        return strategy, strategy.params(**merged)
    return strategy, strategy.params.for_budget(generations, **merged)


def names() -> list[str]:
    _load_all()
    return sorted([*STRATEGIES, *ALIASES])


async def run(name: str, ctx: SearchContext, generations: int | None = None, overrides: dict | None = None) -> SearchResult:
    strategy, params = build_params(name, generations, overrides)
    return await strategy.run(ctx, params)


def _load_all() -> None:
    """Import every strategy module so its ``register`` runs."""
    from nexus_ray.search import (  # noqa: F401
        adaptive,
        beam,
        best_of_n,
        dvts,
        greedy,
        lookahead,
        mcts,
        particles,
    )
