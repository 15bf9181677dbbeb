"""The strategy table: names (and aliases) to strategies, each with a typed parameter model,
so configs, the CLI and the API name them the same way.

A strategy is ``async def run(ctx: SearchContext, params) -> SearchResult``, registered with
``@register``. Its parameter model says how a budget in generations (Snell et al.'s unit)
maps to its own knobs; a strategy registered with ``takes_budget=False`` (greedy) runs at its
defaults whatever the budget. Importing ``nexus_ray.search`` imports every strategy module
once, which fills the table.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from nexus_ray.search.base import SearchContext, StrategyParams
from nexus_ray.search.result import SearchResult

P = TypeVar("P", bound=StrategyParams)


@dataclass(frozen=True)
class Strategy(Generic[P]):
    name: str
    params: type[P]
    run: Callable[[SearchContext, P], Awaitable[SearchResult]]
    needs_prm: bool
    takes_budget: bool = True
    stepwise: bool = False  # builds solutions step by step (re-reading each path), not in one call


STRATEGIES: dict[str, Strategy] = {}


def register(name: str, params: type[P], needs_prm: bool, takes_budget: bool = True, stepwise: bool = False):
    """``stepwise``: the strategy extends paths a step at a time (tree searches), so one of its
    generations costs more than a sample drawn in one call (``planner/spend.py`` prices both)."""

    def wrap(fn: Callable[[SearchContext, P], Awaitable[SearchResult]]):
        STRATEGIES[name] = Strategy(name, params, fn, needs_prm, takes_budget, stepwise)
        return fn

    return wrap


# Names the literature uses for a strategy with fixed parameters.
ALIASES: dict[str, tuple[str, dict]] = {
    "majority": ("best_of_n", {"selection": "majority"}),
    "weighted": ("best_of_n", {"selection": "weighted"}),
}


def get(name: str) -> tuple[Strategy, dict]:
    """The strategy a name (or alias) stands for, and the parameters the alias fixes."""
    base, fixed = ALIASES.get(name, (name, {}))
    if base not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}: choose from {', '.join(names())}")
    return STRATEGIES[base], fixed


def build_params(
    name: str, generations: int | None, overrides: dict | None = None
) -> tuple[Strategy, StrategyParams]:
    """A strategy and its parameters for a budget in generations (None, or a strategy that
    takes no budget: its defaults)."""
    strategy, fixed = get(name)
    merged = {**fixed, **(overrides or {})}
    if generations is None or not strategy.takes_budget:
        return strategy, strategy.params(**merged)
    return strategy, strategy.params.for_budget(generations, **merged)


def names() -> list[str]:
    return sorted([*STRATEGIES, *ALIASES])


def without_budget() -> list[str]:
    """The strategies that take no budget (they run at their defaults)."""
    return sorted(s.name for s in STRATEGIES.values() if not s.takes_budget)


async def run(
    name: str, ctx: SearchContext, generations: int | None = None, overrides: dict | None = None
) -> SearchResult:
    strategy, params = build_params(name, generations, overrides)
    return await strategy.run(ctx, params)
