"""From a request to its plan: a named strategy at a budget, or the calibrated table's plan.

A request that names a strategy or a budget gets that (``PlannerConfig``'s defaults fill the
other). A request that names neither is planned from the table when the service has one: the
plan carries the table's allocation (which plan each difficulty bin runs) for the mean budget
the spend controller sets (``spend.SpendController``: ``mean_budget``, corrected by what the
table plans before it really spent), and ``execute.run_plan`` probes the prompt, bins it and
runs its bin's plan. Either way ``run_plan`` runs the plan under its ceiling (``spend.py``:
the request's budget in policy-token equivalents), which the response reports. A reasoning
effort (OpenAI's ``low``/``medium``/``high``) scales the mean budget, or without a table the
default budget, by ``PlannerConfig.reasoning_effort`` (such plans are not paced); ``minimal``
and ``none`` are greedy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from nexus_ray.config import PlannerConfig
from nexus_ray.planner.allocate import Allocation
from nexus_ray.planner.spend import SpendController
from nexus_ray.planner.table import PlanTable
from nexus_ray.search import registry
from nexus_ray.search.base import StrategyParams

PLANNED = "planner"  # the strategy name a table plan reports
Effort = Literal["none", "minimal", "low", "medium", "high"]


class PlanError(ValueError):
    """The request asks for something no plan gives (an unknown strategy, a budget over the ceiling)."""


@dataclass(frozen=True)
class Plan:
    strategy: str  # a registered name, or PLANNED
    budget: int  # generations (Snell et al.'s unit)
    params: dict = field(default_factory=dict)  # strategy: overrides of its parameters; table plan: its mixes
    source: str = "defaults"  # whose choice: "request" (the caller), "defaults" (the config), "table"
    difficulty: int | None = None  # a table plan's difficulty bin, once run
    reserved: float = 0.0  # estimated policy-token equivalents, held by admission until settled
    wait_s: float = 0.0  # how long admission makes the caller queue before running it
    allocation: Allocation | None = None  # a table plan's: which plan each difficulty bin runs
    mean_budget: float | None = None  # a table plan's: the (paced) mean budget it was allocated at
    ceiling: float | None = None  # policy-token equivalents it may spend at most (set by run_plan)
    effort: str | None = None  # a table plan's reasoning effort, if the request gave one (not paced)

    def to_dict(self) -> dict:
        """What a response reports of the plan."""
        return {k: v for k, v in asdict(self).items() if k not in ("reserved", "allocation")}


class Planner:
    """Plans requests by the service's ``PlannerConfig`` and its plan table (loaded by the caller).

    With a table and ``spend_horizon`` set, table plans are paced by a ``SpendController``
    (``pacer``: carry one over to keep its balance): the caller reports each admitted plan
    (``admitted``) and what it spent (``settled``)."""

    def __init__(
        self, config: PlannerConfig, table: PlanTable | None, pacer: SpendController | None = None
    ) -> None:
        self.config = config
        self.table = table
        self.allocation = table.allocate(config.mean_budget) if table is not None else None
        self._effort_allocations: dict[str, Allocation] = {}
        if pacer is None and table is not None and config.spend_horizon is not None:
            pacer = SpendController(config.mean_budget, config.spend_horizon)
        self.pacer = pacer if table is not None else None

    def plan(
        self,
        budget: int | None,
        strategy: str | None,
        per_generation: float | None = None,
        effort: Effort | None = None,
    ) -> Plan:
        """The plan for a request's budget, strategy and reasoning effort (any may be None; a
        budget or strategy overrides the effort); ``PlanError`` if none fits. A named strategy
        reserves ``per_generation`` policy-token equivalents per generation (None: the configured
        estimate, else a generation's worst case, its ``max_tokens``)."""
        cfg = self.config
        if strategy is None and budget is None and effort in ("none", "minimal"):
            strategy = "greedy"
        elif strategy is None and budget is None and effort is not None:
            if self.table is not None:
                return self._table_plan(effort)
            budget = min(cfg.max_budget, max(1, round(cfg.default_budget * cfg.reasoning_effort[effort])))
        if strategy is None and budget is None and self.table is not None:
            return self._table_plan()
        name = strategy or cfg.default_strategy
        try:
            spec, _ = registry.get(name)
        except ValueError as err:
            raise PlanError(str(err)) from None
        generations = budget or cfg.default_budget
        if generations > cfg.max_budget:
            raise PlanError(
                f"budget {generations} exceeds this service's ceiling of {cfg.max_budget} generations"
            )
        if not spec.takes_budget:
            generations = 1  # it runs at its defaults, priced as one generation
        source = "request" if strategy or budget or effort else "defaults"
        if per_generation is None:
            per_generation = cfg.tokens_per_generation or float(StrategyParams().max_tokens)
        return Plan(name, generations, {}, source, reserved=generations * per_generation)

    def _table_plan(self, effort: str | None = None) -> Plan:
        """The allocation at the paced mean budget (or, for a reasoning effort, at its multiple of
        ``mean_budget``, unpaced) as a plan (its mixes, per bin [low, high, p_high] indices into
        the table's choices, as params). It reserves what the most expensive bin's plan costs on
        the calibration set."""
        assert self.table is not None and self.allocation is not None
        if effort is not None:
            mean_budget = self.config.mean_budget * self.config.reasoning_effort[effort]
            if effort not in self._effort_allocations:
                self._effort_allocations[effort] = self.table.allocate(mean_budget)
            allocation = self._effort_allocations[effort]
        else:
            mean_budget = self.config.mean_budget if self.pacer is None else self.pacer.mean_budget()
            allocation = self.allocation
            if mean_budget != self.config.mean_budget:
                allocation = self.table.allocate(mean_budget)
        mixes = allocation.mixes
        chosen = [self.table.bins[b].choices[i] for b, m in enumerate(mixes) for i in (m.low, m.high)]
        params = {"mixes": [[m.low, m.high, m.p_high] for m in mixes]}
        return Plan(
            PLANNED,
            max(c.option.n for c in chosen),
            params,
            "table",
            reserved=max(c.compute for c in chosen),
            allocation=allocation,
            mean_budget=round(mean_budget, 1),
            effort=effort,
        )

    def admitted(self, plan: Plan) -> None:
        """``plan`` was admitted: the pacer counts it in flight at its allocation's expected spend."""
        if self.pacer is not None and plan.allocation is not None and plan.effort is None:
            self.pacer.admitted(plan.allocation.mean_compute)

    def settled(self, plan: Plan, spent: float) -> None:
        """``plan`` finished having spent ``spent`` policy-token equivalents. A table plan always
        runs its probe, so one that spent nothing failed before it ran (a worker was down): the
        pacer forgets it rather than count a free request."""
        if self.pacer is None or plan.allocation is None or plan.effort is not None:
            return
        if spent > 0:
            self.pacer.settle(plan.allocation.mean_compute, spent)
        else:
            self.pacer.release(plan.allocation.mean_compute)
