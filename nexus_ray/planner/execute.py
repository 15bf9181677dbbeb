"""Running a plan: a named strategy, or the table's: probe, estimate difficulty, pick the bin's
plan, extend the probe, answer.

The table's path runs the same code online (``EngineSampler``), in calibration and in the
benchmark (``ReplaySampler``), so the table's curves price exactly what the service does.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace

from nexus_ray.planner.allocate import Allocation
from nexus_ray.planner.difficulty import Estimator, Probe, run_probe
from nexus_ray.planner.request import Plan
from nexus_ray.planner.sampling import MAX_TOKENS, EngineSampler, Sample, Sampler
from nexus_ray.planner.spend import strategy_ceiling, table_ceiling
from nexus_ray.planner.table import PlanOption, PlanTable
from nexus_ray.search import registry
from nexus_ray.search.aggregate import select
from nexus_ray.search.base import SearchContext
from nexus_ray.search.full_samples import affordable
from nexus_ray.search.ledger import Budget, ComputeLedger
from nexus_ray.search.result import Candidate, SearchResult


@dataclass
class Outcome:
    answer: str | None
    solution: str
    candidates: list[Sample]
    early_exit: bool
    truncated: bool


def probe_answer(probe: Probe) -> int:
    """Index of the probe's answer: PRM-weighted vote when scored, else majority (ties: greedy)."""
    answers = [s.answer for s in probe.samples]
    if probe.scored:
        return select(answers, [s.prm or 0.0 for s in probe.samples], "weighted")
    return select(answers, None, "majority")


async def execute(
    sampler: Sampler,
    probe: Probe,
    option: PlanOption,
    ledger: ComputeLedger,
    budget: Budget | None = None,
    early_exit: bool = True,
) -> Outcome:
    """Extend the probe to ``option.n`` samples and vote, or run the option's strategy; stop at
    the probe when the option says so, when the probe is unanimous (``early_exit``), or when the
    budget has no room."""
    unanimous_exit = early_exit and probe.unanimous and option.strategy != "stop"
    if option.strategy == "stop" or unanimous_exit:
        i = probe_answer(probe)
        return Outcome(
            probe.samples[i].answer, probe.samples[i].text, list(probe.samples), unanimous_exit, False
        )
    if not option.sampled:
        if budget is not None and budget.remaining(ledger) <= 0:
            i = probe_answer(probe)
            return Outcome(probe.samples[i].answer, probe.samples[i].text, list(probe.samples), False, True)
        run = await sampler.run(option, ledger, budget)
        found = Sample(run.answer, run.policy_generated_tokens, 0.0, run.text)
        return Outcome(run.answer, run.text, [*probe.samples, found], False, run.truncated)
    weighted = option.strategy == "weighted"
    more = max(0, option.n - len(probe.samples))
    # A weighted vote also has the PRM read the probe's samples: keep room for that.
    reserve = _scoring_worst_case(sampler, probe.samples, ledger) if weighted else 0.0
    if weighted and budget is not None and not budget.fits(ledger, reserve):
        i = probe_answer(probe)  # no room to score even the probe: answer from it
        return Outcome(probe.samples[i].answer, probe.samples[i].text, list(probe.samples), False, True)
    fit = affordable(budget, ledger, sampler.prompt_tokens, more, sampler.max_tokens, weighted, reserve)
    pool = list(probe.samples) + await sampler.sample(fit, ledger, option.sampling_temperature)
    if weighted:
        pool = await sampler.score(pool, ledger)
        i = select([s.answer for s in pool], [s.prm or 0.0 for s in pool], "weighted")
    else:
        i = select([s.answer for s in pool], None, "majority")
    return Outcome(pool[i].answer, pool[i].text, pool, False, fit < more)


def _scoring_worst_case(sampler: Sampler, samples: list[Sample], ledger: ComputeLedger) -> float:
    """Upper bound of the PRM reading the samples not scored yet (as ``worst_case_round`` bounds
    a path: the prompt, the sample, a few tokens of separators)."""
    unscored = [s for s in samples if s.prm is None]
    return sum(sampler.prompt_tokens + s.tokens + 8 for s in unscored) * ledger.prm_token_cost


@dataclass
class Planned:
    """What the planner did for one prompt, for the response and the records."""

    difficulty: float
    bin: int
    option: PlanOption
    outcome: Outcome
    ledger: ComputeLedger

    def to_search_result(self) -> SearchResult:
        candidates = [Candidate(s.text, s.answer, s.prm) for s in self.outcome.candidates]
        return SearchResult(
            "planner",
            self.outcome.answer,
            self.outcome.solution,
            self.ledger,
            candidates,
            self.outcome.truncated,
        )

    def to_dict(self) -> dict:
        return {
            "difficulty": round(self.difficulty, 4),
            "bin": self.bin,
            "plan": self.option.label,
            "early_exit": self.outcome.early_exit,
            "truncated": self.outcome.truncated,
        }


def draw(problem: str) -> float:
    """A uniform number in [0, 1) fixed by the problem text: mixed plans pick the same way on
    every run, online and in replay."""
    return int.from_bytes(hashlib.sha256(problem.encode()).digest()[:8], "big") / 2**64


async def solve(
    sampler: Sampler,
    problem: str,
    table: PlanTable,
    allocation: Allocation,
    ledger: ComputeLedger,
    budget: Budget | None = None,
    estimator: Estimator | None = None,
    oracle_pass_at_1: float | None = None,
) -> Planned:
    """Probe, bin, and run the allocation's plan for the bin (``estimator`` overrides the
    table's, for benchmarks that swap in the oracle)."""
    estimator = estimator or table.estimator
    probe = await run_probe(sampler, estimator.probe, ledger)
    difficulty = estimator.difficulty(problem, probe, oracle_pass_at_1)
    b = table.bin_of(difficulty)
    option = table.option(b, allocation.mixes[b].pick(draw(problem)))
    outcome = await execute(sampler, probe, option, ledger, budget, table.early_exit)
    return Planned(difficulty, b, option, outcome, ledger)


async def run_plan(
    plan: Plan,
    ctx: SearchContext,
    problem: str,
    table: PlanTable | None,
) -> tuple[SearchResult, Plan]:
    """Run a plan on the context's engines under its ceiling, the request's budget in
    policy-token equivalents (``spend.py``; the lower of it and the context's own Budget, if
    any), put in the context as its ``Budget``: the named strategy, or for a table plan the
    bin's plan for ``problem``. Returns the result and the plan as it ran (with its ceiling;
    a table plan also with its bin as difficulty and what it chose as params)."""
    if plan.allocation is None:
        ceiling = strategy_ceiling(ctx, plan.strategy, plan.budget, plan.params)
    elif table is None:
        raise ValueError("a table plan runs on the table it was planned from; none was given")
    else:
        ceiling = table_ceiling(ctx, table, plan.allocation, MAX_TOKENS)
    if ctx.budget is not None:
        ceiling = min(ceiling, ctx.budget.policy_tokens)
    ceiling = math.floor(ceiling * 10) / 10  # as reported: a spend within it rounds within it
    ctx = replace(ctx, budget=Budget(ceiling))
    plan = replace(plan, ceiling=ceiling)
    if plan.allocation is None:
        return await registry.run(plan.strategy, ctx, plan.budget, plan.params), plan
    assert table is not None
    planned = await solve(EngineSampler(ctx), problem, table, plan.allocation, ctx.new_ledger(), ctx.budget)
    return planned.to_search_result(), replace(plan, difficulty=planned.bin, params=planned.to_dict())
