"""Recorded pools, and running plans on them: what calibration and the benchmark measure with.

A pool record (one JSON line) is a ``Pool`` plus the gold answer, the level, the models'
parameter counts, which the ledger needs to price PRM tokens in policy-token equivalents, and
whether the engines that recorded it cache prompts and scored steps, so that replay charges
what those engines compute (records from before the flags replay without caches).
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path

from nexus_ray.planner.allocate import Allocation
from nexus_ray.planner.difficulty import Estimator, Probe, run_probe
from nexus_ray.planner.execute import Planned, execute, solve
from nexus_ray.planner.request import Planner
from nexus_ray.planner.sampling import EngineSampler, Pool, ReplaySampler, extend_pool, record_pool
from nexus_ray.planner.table import PlanOption, PlanTable
from nexus_ray.search.aggregate import select
from nexus_ray.search.base import SearchContext
from nexus_ray.search.ledger import ComputeLedger
from nexus_ray.tasks import datasets
from nexus_ray.tasks.format import TaskFormat
from nexus_ray.tasks.grading import is_equivalent


@dataclass(frozen=True)
class Recorded:
    pool: Pool
    gold: str
    level: int | str | None
    policy_parameters: int
    prm_parameters: int
    answer_kind: str
    prefix_caching: bool = False
    prm_prefix_caching: bool = False
    verdicts: dict[str | None, bool] = field(default_factory=dict, compare=False, repr=False)

    def correct(self, answer: str | None) -> bool:
        """Graded once per distinct answer: replays ask again and again, and math-verify is slow."""
        if answer not in self.verdicts:
            self.verdicts[answer] = is_equivalent(answer, self.gold, self.answer_kind)
        return self.verdicts[answer]

    @property
    def pass_at_1(self) -> float:
        return self.pool.pass_at_1(self.correct)

    def ledger(self) -> ComputeLedger:
        return ComputeLedger(
            self.policy_parameters,
            self.prm_parameters,
            prefix_caching=self.prefix_caching,
            prm_prefix_caching=self.prm_prefix_caching,
        )

    def to_dict(self) -> dict:
        """The pool record's JSON line (``load_pools`` reads it back)."""
        return {
            **self.pool.to_dict(),
            "gold": self.gold,
            "level": self.level,
            "answer_kind": self.answer_kind,
            "policy_parameters": self.policy_parameters,
            "prm_parameters": self.prm_parameters,
            "prefix_caching": self.prefix_caching,
            "prm_prefix_caching": self.prm_prefix_caching,
        }


async def record_one(
    policy,
    prm,
    example: datasets.Example,
    *,
    fmt: TaskFormat,
    samples: int,
    seed: int,
    temperatures: tuple[float, ...] = (),
    runs: tuple[PlanOption, ...] = (),
) -> dict:
    """A work item for the eval harness's runners: one problem's pool, as a JSON-able record."""
    ctx = SearchContext.for_problem(policy, prm, fmt, example.problem, None, seed)
    pool = await record_pool(ctx, example.problem, samples, temperatures=temperatures, runs=runs)
    caches = ctx.new_ledger()
    rec = Recorded(
        pool,
        example.answer,
        example.level,
        policy.num_parameters,
        prm.num_parameters,
        fmt.answer_kind,
        caches.prefix_caching,
        caches.prm_prefix_caching,
    )
    return rec.to_dict()


async def complete_one(
    policy,
    prm,
    rec: Recorded,
    *,
    fmt: TaskFormat,
    samples: int,
    seed: int,
    temperatures: tuple[float, ...] = (),
    runs: tuple[PlanOption, ...] = (),
) -> dict:
    """A work item: a recorded pool with what a table's plans need and it lacks: ``samples``
    scored samples at each missing temperature, each missing run (a tree-search plan)."""
    ctx = SearchContext.for_problem(policy, prm, fmt, rec.pool.problem, None, seed)
    pool = await extend_pool(EngineSampler(ctx), rec.pool, samples, temperatures, runs)
    return replace(rec, pool=pool).to_dict()


def needs(tables: list[PlanTable]) -> tuple[tuple[float, ...], tuple[PlanOption, ...]]:
    """The temperatures and runs the plans these tables can choose need in a pool."""
    options = {c.option for table in tables for b in table.bins for c in b.choices}
    temperatures = tuple(sorted({o.sampling_temperature for o in options if o.sampled} - {1.0}))
    return temperatures, tuple(sorted((o for o in options if not o.sampled), key=lambda o: o.label))


def lacking(
    recs: list[Recorded], temperatures: tuple[float, ...], runs: tuple[PlanOption, ...]
) -> list[Recorded]:
    """The pools without samples at one of ``temperatures`` or without one of ``runs``."""
    return [
        r
        for r in recs
        if any(t not in r.pool.tempered for t in temperatures)
        or any(o.label not in r.pool.runs for o in runs)
    ]


def load_pools(path: Path) -> list[Recorded]:
    out = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        d = json.loads(line)
        out.append(
            Recorded(
                Pool.from_dict(d),
                d["gold"],
                d["level"],
                d["policy_parameters"],
                d["prm_parameters"],
                d["answer_kind"],
                d.get("prefix_caching", False),
                d.get("prm_prefix_caching", False),
            )
        )
    return out


@dataclass(frozen=True)
class Result:
    correct: bool
    compute: float  # policy-token equivalents
    planned: Planned | None = None


async def _probe(rec: Recorded, estimator: Estimator) -> tuple[Probe, ComputeLedger, ReplaySampler]:
    sampler = ReplaySampler(rec.pool)
    ledger = rec.ledger()
    return await run_probe(sampler, estimator.probe, ledger), ledger, sampler


async def _difficulty(rec: Recorded, estimator: Estimator) -> float:
    probe, _, _ = await _probe(rec, estimator)
    return estimator.difficulty(rec.pool.problem, probe, rec.pass_at_1)


async def _option(rec: Recorded, estimator: Estimator, option: PlanOption, early_exit: bool) -> Result:
    probe, ledger, sampler = await _probe(rec, estimator)
    outcome = await execute(sampler, probe, option, ledger, None, early_exit)
    return Result(rec.correct(outcome.answer), ledger.policy_token_equivalents)


async def _planned(
    rec: Recorded, table: PlanTable, allocation: Allocation, estimator: Estimator | None
) -> Result:
    ledger = rec.ledger()
    planned = await solve(
        ReplaySampler(rec.pool), rec.pool.problem, table, allocation, ledger, None, estimator, rec.pass_at_1
    )
    return Result(rec.correct(planned.outcome.answer), ledger.policy_token_equivalents, planned)


async def _uniform(rec: Recorded, selection: str, n: int) -> Result:
    """Uniform best-of-n without a planner: n temperature-1 samples, majority or PRM-weighted."""
    sampler, ledger = ReplaySampler(rec.pool), rec.ledger()
    pool = await sampler.sample(n, ledger)
    scores = None
    if selection == "weighted":
        pool = await sampler.score(pool, ledger)
        scores = [s.prm or 0.0 for s in pool]
    i = select([s.answer for s in pool], scores, selection)  # type: ignore[arg-type]
    return Result(rec.correct(pool[i].answer), ledger.policy_token_equivalents)


def probes(recs: list[Recorded], estimator: Estimator) -> list[Probe]:
    async def one(r: Recorded) -> Probe:
        return (await _probe(r, estimator))[0]

    return asyncio.run(_gather(one(r) for r in recs))


def difficulties(recs: list[Recorded], estimator: Estimator) -> list[float]:
    return asyncio.run(_gather(_difficulty(r, estimator) for r in recs))


def option_results(
    recs: list[Recorded], estimator: Estimator, option: PlanOption, early_exit: bool
) -> list[Result]:
    return asyncio.run(_gather(_option(r, estimator, option, early_exit) for r in recs))


def planned_results(
    recs: list[Recorded],
    table: PlanTable,
    allocation: Allocation,
    estimator: Estimator | None = None,
) -> list[Result]:
    return asyncio.run(_gather(_planned(r, table, allocation, estimator) for r in recs))


def paced_results(recs: list[Recorded], planner: Planner, in_flight: int = 1) -> list[Result]:
    """The planner as the service runs it, over ``recs`` in order: each problem gets a table plan
    from ``planner`` (at the mean budget its spend controller sets, if it has one), runs it on its
    pool, and settles with what it spent ``in_flight`` - 1 problems later (as concurrent requests
    settle after later ones were planned; 1: before the next is planned)."""
    table = planner.table
    if table is None:
        raise ValueError("pacing replays table plans: the planner has no table")

    async def run() -> list[Result]:
        results: list[Result] = []
        pending: deque = deque()
        for rec in recs:
            plan = planner.plan(None, None)
            planner.admitted(plan)
            assert plan.allocation is not None
            result = await _planned(rec, table, plan.allocation, None)
            results.append(result)
            pending.append((plan, result.compute))
            if len(pending) >= in_flight:
                planner.settled(*pending.popleft())
        while pending:
            planner.settled(*pending.popleft())
        return results

    return asyncio.run(run())


def uniform_results(recs: list[Recorded], selection: str, n: int) -> list[Result]:
    return asyncio.run(_gather(_uniform(r, selection, n) for r in recs))


async def _gather(coros) -> list:
    return list(await asyncio.gather(*coros))
