"""The planner's parts: allocation against brute force, cross-validation hygiene, budgets,
replay priced like the online path, and the table artifact."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import shutil
from dataclasses import replace

import pytest

from nexus_ray.config import PlannerConfig
from nexus_ray.planner.allocate import Point, allocate, split_batch, upper_hull
from nexus_ray.planner.calibrate import cross_validated, fold, menu, quantile_edges
from nexus_ray.planner.difficulty import Estimator, LogisticModel, ProbeSpec, run_probe, spearman
from nexus_ray.planner.execute import execute, run_plan, solve
from nexus_ray.planner.replay import Result
from nexus_ray.planner.request import Planner
from nexus_ray.planner.sampling import EngineSampler, ReplaySampler, record_pool
from nexus_ray.planner.table import (
    BinEntry,
    BudgetChoice,
    ModelStamp,
    OptionStats,
    PlanOption,
    PlanTable,
    TableError,
    model_fingerprint,
)
from nexus_ray.search import registry
from nexus_ray.search.base import SearchContext
from nexus_ray.search.ledger import Budget, ComputeLedger
from nexus_ray.tasks.format import ARITH
from tests.sim import SimPolicy, SimPRM


def random_curves(rng: random.Random, bins: int, points: int) -> list[list[Point]]:
    curves = []
    for _ in range(bins):
        costs = sorted(rng.uniform(1, 100) for _ in range(points))
        curves.append([Point(c, rng.uniform(0, 1), i) for i, c in enumerate(costs)])
    return curves


def brute_force(curves: list[list[Point]], weights: list[float], budget: float) -> float:
    """Best weighted accuracy over every one-plan-per-bin choice within the budget."""
    best = -1.0
    for combo in itertools.product(*curves):
        if sum(w * p.compute for w, p in zip(weights, combo)) <= budget + 1e-9:
            best = max(best, sum(w * p.accuracy for w, p in zip(weights, combo)))
    return best


@pytest.mark.parametrize("seed", range(40))
def test_allocation_matches_brute_force(seed):
    rng = random.Random(seed)
    curves = random_curves(rng, bins=rng.randint(1, 4), points=rng.randint(1, 5))
    raw = [rng.random() + 0.1 for _ in curves]
    weights = [w / sum(raw) for w in raw]
    cheapest = sum(w * min(p.compute for p in c) for w, c in zip(weights, curves))
    budget = cheapest + rng.uniform(0, 80)
    alloc = allocate(curves, weights, budget)
    # The (fractional) allocation is feasible and at least as good as any integral choice...
    assert alloc.mean_compute <= budget + 1e-9
    assert alloc.expected_accuracy >= brute_force(curves, weights, budget) - 1e-9
    # ...its reported numbers are what its mixes give...
    by_index = [{p.index: p for p in c} for c in curves]
    acc = sum(
        w * ((1 - m.p_high) * by[m.low].accuracy + m.p_high * by[m.high].accuracy)
        for w, m, by in zip(weights, alloc.mixes, by_index)
    )
    cost = sum(
        w * ((1 - m.p_high) * by[m.low].compute + m.p_high * by[m.high].compute)
        for w, m, by in zip(weights, alloc.mixes, by_index)
    )
    assert acc == pytest.approx(alloc.expected_accuracy) and cost == pytest.approx(alloc.mean_compute)
    # ...and at the budget its integral part spends, it is exactly the brute-force optimum.
    integral = sum(w * by[m.low].compute for w, m, by in zip(weights, alloc.mixes, by_index))
    exact = allocate(curves, weights, integral)
    assert all(m.p_high in (0.0, 1.0) or m.low == m.high for m in exact.mixes)
    assert exact.expected_accuracy == pytest.approx(brute_force(curves, weights, integral), abs=1e-9)


def test_allocation_spends_nothing_where_compute_does_not_help():
    flat = [Point(10, 0.9, 0), Point(100, 0.9, 1), Point(400, 0.85, 2)]
    steep = [Point(10, 0.2, 0), Point(100, 0.6, 1), Point(400, 0.7, 2)]
    alloc = allocate([flat, steep], [0.5, 0.5], mean_budget=10 + 45)  # room for the steep bin's step only
    assert [alloc.mixes[0].pick(u) for u in (0.0, 0.99)] == [0, 0]
    assert [alloc.mixes[1].pick(u) for u in (0.0, 0.99)] == [1, 1]
    assert alloc.mean_compute == pytest.approx(55) and alloc.expected_accuracy == pytest.approx(0.75)
    assert upper_hull(flat) == [flat[0]]


def test_split_batch_stays_within_the_total_and_prefers_marginal_gain():
    easy = [Point(10, 0.95, 0), Point(50, 0.96, 1)]
    hard = [Point(10, 0.3, 0), Point(50, 0.6, 1), Point(200, 0.7, 2)]
    plans, spent = split_batch([easy, hard, hard], total_budget=120)
    assert spent <= 120
    assert plans == [0, 1, 1]  # the hard prompts get the compute, the easy one does not
    rng = random.Random(0)
    for _ in range(50):
        curves = random_curves(rng, bins=4, points=3)
        total = sum(c[0].compute for c in curves) + rng.uniform(0, 150)
        plans, spent = split_batch(curves, total)
        assert spent <= total + 1e-9
        assert spent == pytest.approx(sum({p.index: p for p in c}[i].compute for c, i in zip(curves, plans)))


def test_cross_validation_never_scores_the_plan_on_the_problems_that_picked_it():
    problems = [f"{i}+{i}" for i in range(40)]
    folds = [fold(p) for p in problems]
    assert 0 < sum(folds) < len(folds)
    # Plan 0 is right exactly on fold 0, plan 1 exactly on fold 1: in-sample either looks like
    # 50%, but chosen on one half it is always scored on the half where it is wrong.
    results = {
        0: [Result(f == 0, 1.0) for f in folds],
        1: [Result(f == 1, 1.0) for f in folds],
    }
    assert cross_validated([0, 1], results, list(range(40)), folds) == 0.0
    # A plan right everywhere beats plans right on half of one fold, on both halves.
    results = {
        0: [Result(f == 0 and i % 2 == 0, 1.0) for i, f in enumerate(folds)],
        1: [Result(f == 1 and i % 2 == 0, 1.0) for i, f in enumerate(folds)],
        2: [Result(True, 5.0) for _ in folds],
    }
    assert cross_validated([0, 1, 2], results, list(range(40)), folds) == 1.0


def test_quantile_edges_leave_no_bin_empty():
    rng = random.Random(1)
    values = [rng.choice([0.0, 0.0, 0.0, 0.1, 0.5, 0.9]) for _ in range(100)]
    edges = quantile_edges(values, 5)
    import bisect

    counts = [sum(bisect.bisect_left(edges, v) == b for v in values) for b in range(len(edges) + 1)]
    assert all(counts) and edges == sorted(set(edges))


def test_menu_rejects_plans_the_pools_cannot_price():
    with pytest.raises(ValueError, match="more samples than the pools hold"):
        menu([4, 32], pool_samples=15)


def test_logistic_model_learns_a_monotone_signal_and_spearman_ranks():
    rng = random.Random(0)
    x = [[rng.uniform(-2, 2), rng.uniform(-1, 1)] for _ in range(300)]
    import numpy as np

    y = np.array([1 / (1 + np.exp(-3 * a)) for a, _ in x])
    model = LogisticModel.fit(np.array(x), y)
    pred = model.predict(np.array(x))
    assert spearman(list(pred), list(y)) > 0.98
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def sim_ctx(seed: int = 0, budget: Budget | None = None) -> SearchContext:
    return SearchContext(SimPolicy(step_error=0.15), SimPRM(), ARITH.prompt("3+4*5-6"), ARITH, budget, seed)


def make_table(
    policy: str = "arith-policy", prm: str = "arith-prm", hard: PlanOption | None = None
) -> PlanTable:
    """A two-bin table: easy prompts stop at the probe, hard ones go to weighted@8 (or ``hard``)."""
    stop, w8 = PlanOption(strategy="stop"), hard or PlanOption(strategy="weighted", n=8)

    def entry(option: PlanOption) -> BinEntry:
        return BinEntry(
            problems=10,
            weight=0.5,
            options=[OptionStats(option=option, compute=100.0, accuracy=0.5)],
            choices=[
                BudgetChoice(budget=1, option=stop, compute=50, accuracy=0.5, cv_accuracy=0.5),
                BudgetChoice(budget=8, option=option, compute=500, accuracy=0.8, cv_accuracy=0.8),
            ],
        )

    return PlanTable(
        created="now",
        dataset="synthetic",
        problems=20,
        seed=0,
        policy=ModelStamp(name=policy, fingerprint=model_fingerprint(policy)),
        prm=ModelStamp(name=prm, fingerprint=model_fingerprint(prm)),
        estimator=Estimator.named("probe"),
        early_exit=False,
        edges=[0.3],
        bins=[entry(stop), entry(w8)],
    )


def test_replay_charges_exactly_what_the_online_path_charges():
    """Same samples, same calls: a pool recorded from the engines and replayed through a plan
    costs what running that plan on the engines costs."""
    ctx = sim_ctx()
    pool = asyncio.run(record_pool(ctx, "3+4*5-6", m=7))
    option = PlanOption(strategy="weighted", n=8)
    spec = ProbeSpec(samples=4, prm=True)

    async def run(sampler) -> ComputeLedger:
        ledger = ctx.new_ledger()
        probe = await run_probe(sampler, spec, ledger)
        await execute(sampler, probe, option, ledger, None, early_exit=False)
        return ledger

    online = asyncio.run(run(EngineSampler(sim_ctx())))
    replayed = asyncio.run(run(ReplaySampler(pool)))
    # The engine's second call draws other samples than the pool's tail, so token counts may
    # differ by the samples' lengths; prefills, generations and calls must agree exactly.
    assert replayed.policy_prefill_tokens == online.policy_prefill_tokens
    assert replayed.generations == online.generations == 8
    greedy_only = ProbeSpec(samples=1, prm=False)

    async def stop(sampler) -> ComputeLedger:
        ledger = ctx.new_ledger()
        probe = await run_probe(sampler, greedy_only, ledger)
        await execute(sampler, probe, PlanOption(strategy="stop"), ledger)
        return ledger

    assert (
        asyncio.run(stop(EngineSampler(sim_ctx()))).to_dict()
        == asyncio.run(stop(ReplaySampler(pool))).to_dict()
    )


def test_a_tree_search_plan_runs_its_strategy_online_and_replays_its_recorded_run():
    """A table may send a bin to beam search: online the planner runs beam after the probe and
    charges both; a pool records the run, and replaying the plan charges exactly that."""
    beam = PlanOption(strategy="beam", n=4)
    table = make_table(hard=beam).model_copy(update={"edges": [-1e9]})  # every prompt is hard
    alloc = table.allocate(10_000)
    hard = "21-95*9-52+5*3"
    ctx = replace(sim_ctx(), prompt=ARITH.prompt(hard))
    online = ctx.new_ledger()
    planned = asyncio.run(solve(EngineSampler(ctx), hard, table, alloc, online))
    probe_ledger = ctx.new_ledger()
    asyncio.run(run_probe(EngineSampler(ctx), table.estimator.probe, probe_ledger))
    assert planned.option == beam
    alone = asyncio.run(registry.run("beam", ctx, 4))
    assert planned.outcome.answer == alone.answer
    assert online.policy_generated_tokens == (
        probe_ledger.policy_generated_tokens + alone.ledger.policy_generated_tokens
    )
    pool = asyncio.run(record_pool(ctx, hard, m=3, runs=(beam,), temperatures=(0.5,)))
    assert set(pool.runs) == {"beam@4"} and len(pool.tempered[0.5]) == 3
    recorded = pool.runs["beam@4"]
    assert recorded.answer == asyncio.run(registry.run("beam", ctx, 4)).answer
    ledger = ctx.new_ledger()
    sampler = ReplaySampler(type(pool).from_dict(json.loads(json.dumps(pool.to_dict()))))
    probe = asyncio.run(run_probe(sampler, ProbeSpec(samples=1), ledger))
    outcome = asyncio.run(execute(sampler, probe, beam, ledger))
    assert outcome.answer == recorded.answer
    assert ledger.policy_prefill_tokens == pool.prompt_tokens + recorded.policy_prefill_tokens
    assert ledger.prm_tokens == recorded.prm_tokens
    cool = asyncio.run(execute(sampler, probe, PlanOption(strategy="majority", n=3, temperature=0.5), ledger))
    assert [s.answer for s in cool.candidates[1:]] == [s.answer for s in pool.tempered[0.5][:2]]
    with pytest.raises(ValueError, match="no run of dvts@4"):
        asyncio.run(execute(ReplaySampler(pool), probe, PlanOption(strategy="dvts", n=4), ctx.new_ledger()))
    with pytest.raises(ValueError, match="unknown strategy"):
        PlanOption(strategy="telepathy", n=4)


@pytest.mark.parametrize("ceiling", [150.0, 400.0, 900.0, 3000.0])
def test_the_planner_respects_a_budget(ceiling):
    table = make_table()
    alloc = table.allocate(10_000)  # the table would give the hard bin weighted@8
    for seed in range(5):
        ctx = sim_ctx(seed, Budget(ceiling))
        ledger = ctx.new_ledger()
        planned = asyncio.run(solve(EngineSampler(ctx), "3+4*5-6", table, alloc, ledger, ctx.budget))
        # The probe always runs (it is the cheapest answer there is); what follows fits.
        probe_ledger = ctx.new_ledger()
        asyncio.run(run_probe(EngineSampler(sim_ctx(seed)), table.estimator.probe, probe_ledger))
        assert ledger.policy_token_equivalents <= max(ceiling, probe_ledger.policy_token_equivalents) + 1e-9
        assert planned.outcome.answer is not None


def test_run_plan_runs_the_table_plan_or_the_named_strategy_within_the_context_budget():
    """The service's one entry point: a table plan is the planner's solve, a named plan its
    strategy, both on the context's engines and within the context's Budget."""
    table = make_table()
    planner = Planner(PlannerConfig(mean_budget=10_000), table)
    table_plan = planner.plan(None, None)
    assert table_plan.allocation == table.allocate(10_000)
    result, ran = asyncio.run(run_plan(table_plan, sim_ctx(0, Budget(400.0)), "3+4*5-6", table))
    ledger = sim_ctx().new_ledger()
    sampler = EngineSampler(sim_ctx(0, Budget(400.0)))
    direct = asyncio.run(solve(sampler, "3+4*5-6", table, table_plan.allocation, ledger, Budget(400.0)))
    assert (ran.difficulty, ran.params) == (direct.bin, direct.to_dict()) and ran.source == "table"
    assert result.answer == direct.outcome.answer and result.ledger.to_dict() == ledger.to_dict()
    named = planner.plan(4, "weighted")
    result, ran = asyncio.run(run_plan(named, sim_ctx(0, Budget(400.0)), "3+4*5-6", table))
    alone = asyncio.run(registry.run("weighted", sim_ctx(0, Budget(400.0)), 4))
    assert ran == replace(named, ceiling=400.0) and result.ledger.to_dict() == alone.ledger.to_dict()
    assert result.ledger.policy_token_equivalents <= 400.0
    assert planner.plan(16, "greedy").budget == 1  # a strategy without a budget is planned at one generation


def test_table_round_trips_and_refuses_stale_or_missing(tmp_path):
    table = make_table()
    path = tmp_path / "table.json"
    table.save(path)
    assert PlanTable.load(path) == table
    table.check_models("arith-policy", "arith-prm")
    with pytest.raises(TableError, match="calibrated with policy"):
        make_table(policy="arith-prm").check_models("arith-policy", "arith-prm")
    with pytest.raises(TableError, match="not found"):
        PlanTable.load(tmp_path / "missing.json")
    raw = json.loads(path.read_text())
    raw["schema_version"] = 0
    path.write_text(json.dumps(raw))
    with pytest.raises(TableError, match="schema version"):
        PlanTable.load(path)
    path.write_text("{")
    with pytest.raises(TableError, match="not JSON"):
        PlanTable.load(path)


def test_a_table_refuses_the_same_model_retrained(tmp_path):
    """Same architecture, same file sizes, other weights (a retrained checkpoint): the table
    calibrated with the old weights is stale."""
    from nexus_ray.zoo.registry import resolve

    model = tmp_path / "prm"
    shutil.copytree(resolve("arith-prm"), model)
    table = make_table(prm=str(model))
    table.check_models("arith-policy", str(model))
    (weights,) = model.glob("*.safetensors")
    size = weights.stat().st_size
    with weights.open("r+b") as fh:  # one byte of the last tensor
        fh.seek(size - 5)
        byte = fh.read(1)[0]
        fh.seek(size - 5)
        fh.write(bytes([byte ^ 0xFF]))
    assert weights.stat().st_size == size
    with pytest.raises(TableError, match="fingerprints differ"):
        table.check_models("arith-policy", str(model))


def test_calibrate_end_to_end_on_the_zoo(tmp_path):
    """Real zoo models: pools, tables for two estimators, plots; then the refusals."""
    from nexus_ray.jobs import calibrate as job

    args = [
        "--dataset",
        "arith-calib",
        "--per-level",
        "2",
        "--samples",
        "3",
        "--sizes",
        "2,4",
        "--bins",
        "2",
        "--estimator",
        "surprisal,learned",
        "--concurrency",
        "8",
        "--out",
        str(tmp_path),
    ]
    assert job.main(args) == 0
    for name in ("surprisal", "learned"):
        table = PlanTable.load(tmp_path / f"table-{name}.json")
        table.check_models("arith-policy", "arith-prm-rewrite")  # the default checker on hf
        assert table.problems == 10 and sum(b.problems for b in table.bins) == 10
        assert [c.budget for c in table.bins[0].choices] == [1, 2, 4]
        assert (tmp_path / f"curves-{name}.png").stat().st_size > 0
    assert PlanTable.load(tmp_path / "table-learned.json").estimator.model is not None
    assert job.main(args) == 2  # pools are there: refuses to overwrite without --resume
    assert job.main([*args, "--resume"]) == 0  # nothing left to record; tables rebuilt
    assert job.main([*args, "--resume", "--estimator", "telepathy"]) == 2
    assert job.main([*args, "--resume", "--sizes", "4,64"]) == 2
    assert job.main([*args, "--resume", "--strategies", "beam", "--run-sizes", "4"]) == 2  # pools lack it


def test_calibrate_offers_tree_search_and_other_temperatures_on_the_zoo(tmp_path):
    """Calibration runs beam search for real per problem and records samples at a second
    temperature; every bin's curves price those plans, and the choices may take them."""
    from nexus_ray.jobs import calibrate as job

    args = [
        "--dataset",
        "arith-calib",
        "--per-level",
        "2",
        "--samples",
        "3",
        "--sizes",
        "2,4",
        "--temperatures",
        "1.0,0.5",
        "--strategies",
        "beam",
        "--run-sizes",
        "4",
        "--bins",
        "2",
        "--estimator",
        "surprisal",
        "--concurrency",
        "8",
        "--out",
        str(tmp_path),
    ]
    assert job.main(args) == 0
    pools = [json.loads(line) for line in (tmp_path / "pools.jsonl").read_text().splitlines()]
    assert len(pools) == 10 and all(
        set(p["runs"]) == {"beam@4"} and len(p["tempered"]["0.5"]) == 3 for p in pools
    )
    table = PlanTable.load(tmp_path / "table-surprisal.json")
    for b in table.bins:
        labels = {o.option.label for o in b.options}
        assert {"beam@4", "weighted@4/t0.5", "majority@2/t0.5", "weighted@4"} <= labels
    # beam@4's price is the greedy probe plus the recorded run, problem by problem
    ratio = pools[0]["prm_parameters"] / pools[0]["policy_parameters"]
    runs = [p["runs"]["beam@4"] for p in pools]
    expected = sum(
        p["prompt_tokens"]
        + p["greedy"]["tokens"]
        + r["policy_generated_tokens"]
        + r["policy_prefill_tokens"]
        + r["prm_tokens"] * ratio
        for p, r in zip(pools, runs)
    ) / len(pools)
    beam = [next(o for o in b.options if o.option.label == "beam@4") for b in table.bins]
    assert sum(o.compute * b.problems for o, b in zip(beam, table.bins)) / 10 == pytest.approx(expected)
    assert job.main([*args, "--resume", "--strategies", "greedy"]) == 2  # takes no budget: not a plan


def test_reasoning_effort_scales_the_mean_budget_and_leaves_the_pacer_alone():
    table = make_table()
    config = PlannerConfig(mean_budget=400, default_budget=8, max_budget=64)
    planner = Planner(config, table)
    assert planner.plan(None, None, effort="none").strategy == "greedy"
    assert planner.plan(None, None, effort="minimal").budget == 1
    low, high = planner.plan(None, None, effort="low"), planner.plan(None, None, effort="high")
    assert (low.effort, low.mean_budget, high.mean_budget) == ("low", 200.0, 1600.0)
    assert low.allocation == table.allocate(200) and high.allocation == table.allocate(1600)
    assert low.allocation.mean_compute <= high.allocation.mean_compute
    assert planner.plan(2, None, effort="high").budget == 2  # a budget overrides the effort
    assert planner.plan(None, "majority", effort="low").strategy == "majority"
    balance = planner.pacer.mean_budget()
    planner.admitted(high)
    planner.settled(high, 5000.0)  # an effort plan spends what its effort asked: not a debt
    assert planner.pacer.mean_budget() == balance
    untabled = Planner(config, None)
    assert [untabled.plan(None, None, effort=e).budget for e in ("low", "medium", "high")] == [4, 8, 32]
