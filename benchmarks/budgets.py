"""Budgets that hold (issue 16): does every request stay within its budget, and does the
planner's mean spend hold to its mean budget on a set it was not calibrated on?

    python benchmarks/budgets.py                                  # both parts (~10 min on 2 cores)
    python benchmarks/budgets.py --per-level 2 --budgets 4        # a quicker ceiling check
    python benchmarks/budgets.py --skip-ceilings                  # pacing only (seconds)

1. Pacing (replay, seconds). The planner with the built-in table (``--table``, default
   ``arith-zoo``, calibrated on arith-calib) over the recorded arith-test pools (``--pools``,
   written by planner_efficiency.py: greedy decode + 32 samples per problem, PRM-scored), at
   each ``--mean-budgets``: before (no correction, the static allocation) and after (the spend
   controller as the admission actor runs it), with one request at a time and with 16 in
   flight (each settles 15 requests late), on all of arith-test and on its levels 3-5; and,
   after, over ``--orders`` random orders of arith-test (mean and worst deviation).
2. Ceilings (the zoo models, in process). Every named strategy at each ``--budgets`` on
   ``--per-level`` arith-test problems per level, run by ``planner.execute.run_plan`` under the
   request's ceiling, as the service runs it: the most and the mean it spent of its ceiling,
   and how often it was truncated; and the same strategy without a ceiling (as the service
   ran before issue 16), to show what the ceiling changed.

Writes ``--out``/budgets.json (and ceiling-records.jsonl, resumable) and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nexus_ray.config import PlannerConfig
from nexus_ray.jobs import models
from nexus_ray.jobs.eval import load_records, run_local, select_examples
from nexus_ray.planner import replay
from nexus_ray.planner.execute import run_plan
from nexus_ray.planner.request import Planner
from nexus_ray.planner.spend import strategy_ceiling
from nexus_ray.planner.table import load_table
from nexus_ray.search import registry
from nexus_ray.search.base import SearchContext
from nexus_ray.tasks.datasets import Example
from nexus_ray.tasks.format import TaskFormat
from nexus_ray.tasks.grading import is_equivalent

STRATEGIES = "greedy,majority,weighted,adaptive,beam,dvts,lookahead,mcts,particles"


def mean_spend(recs: list[replay.Recorded], table, budget: float, horizon: float | None, in_flight: int):
    planner = Planner(PlannerConfig(mean_budget=budget, spend_horizon=horizon), table)
    results = replay.paced_results(recs, planner, in_flight)
    return float(np.mean([r.compute for r in results])), float(np.mean([r.correct for r in results]))


def pacing(args, table) -> dict:
    recs = replay.load_pools(args.pools)
    sets = {"arith-test": recs, "arith-test levels 3-5": [r for r in recs if r.level in (3, 4, 5)]}
    rows = []
    for name, rs in sets.items():
        for b in args.mean_budgets:
            before, acc_before = mean_spend(rs, table, b, None, 1)
            after, acc_after = mean_spend(rs, table, b, args.horizon, 1)
            after16, _ = mean_spend(rs, table, b, args.horizon, 16)
            rows.append(
                {
                    "set": name,
                    "problems": len(rs),
                    "mean_budget": b,
                    "before": before,
                    "after": after,
                    "after_16_in_flight": after16,
                    "accuracy_before": acc_before,
                    "accuracy_after": acc_after,
                }
            )
    orders = []
    for b in args.mean_budgets:
        for in_flight in (1, 16):
            devs = []
            for seed in range(args.orders):
                shuffled = list(recs)
                random.Random(seed).shuffle(shuffled)
                spent, _ = mean_spend(shuffled, table, b, args.horizon, in_flight)
                devs.append(spent / b - 1)
            orders.append(
                {
                    "mean_budget": b,
                    "in_flight": in_flight,
                    "orders": args.orders,
                    "mean_deviation": float(np.mean(devs)),
                    "worst_deviation": float(max(devs, key=abs)),
                }
            )
    return {"pools": str(args.pools), "horizon": args.horizon, "rows": rows, "random_orders": orders}


async def solve_capped(
    policy, prm, item: tuple[Example, str, int, bool], *, fmt: TaskFormat, seed: int
) -> dict:
    """One (problem, strategy, budget) as the service runs it (capped), or without a ceiling."""
    example, strategy, budget, capped = item
    plan = Planner(PlannerConfig(max_budget=1024), None).plan(budget, strategy)
    ctx = SearchContext.for_problem(policy, prm, fmt, example.problem, None, seed)
    ceiling = strategy_ceiling(ctx, plan.strategy, plan.budget, plan.params)
    start = time.perf_counter()
    if capped:
        result, ran = await run_plan(plan, ctx, example.problem, None)
        ceiling = ran.ceiling
    else:
        result = await registry.run(plan.strategy, ctx, plan.budget, plan.params)
    return {
        "problem": example.problem,
        "level": example.level,
        "strategy": strategy,
        "budget": plan.budget,
        "capped": capped,
        "ceiling": ceiling,
        "spent": result.ledger.policy_token_equivalents,
        "truncated": result.truncated,
        "correct": is_equivalent(result.answer, example.answer, fmt.answer_kind),
        "seconds": round(time.perf_counter() - start, 3),
    }


def ceilings(args) -> dict:
    examples = select_examples("arith-test", args.per_level)
    names = args.strategies.split(",")
    work = []
    for name in names:
        spec, _ = registry.get(name)
        for b in args.budgets if spec.takes_budget else [1]:
            work += [(e, name, b, capped) for e in examples for capped in (True, False)]
    path = args.out / "ceiling-records.jsonl"
    key = lambda r: (r["problem"], r["strategy"], r["budget"], r["capped"])
    done = {key(r) for r in load_records(path)}
    todo = [w for w in work if (w[0].problem, w[1], w[2], w[3]) not in done]
    if todo:
        print(f"running {len(todo)} solves ({len(done)} done) -> {path}")
        solver = partial(solve_capped, fmt=args.fmt, seed=args.seed)
        run_local(args.models.policy, args.models.prm, solver, todo, path, args.concurrency)
    wanted = {(e.problem, n, b, c) for e, n, b, c in work}
    records = [r for r in load_records(path) if key(r) in wanted]
    rows = []
    for name in names:
        for b in sorted({r["budget"] for r in records if r["strategy"] == name}):
            mine = [r for r in records if r["strategy"] == name and r["budget"] == b]
            capped = [r for r in mine if r["capped"]]
            free = [r for r in mine if not r["capped"]]
            rows.append(
                {
                    "strategy": name,
                    "budget": b,
                    "problems": len(capped),
                    "max_spent_over_ceiling": max(r["spent"] / r["ceiling"] for r in capped),
                    "mean_spent_over_ceiling": float(np.mean([r["spent"] / r["ceiling"] for r in capped])),
                    "mean_ceiling": float(np.mean([r["ceiling"] for r in capped])),
                    "mean_spent": float(np.mean([r["spent"] for r in capped])),
                    "truncated": sum(r["truncated"] for r in capped),
                    "accuracy": float(np.mean([r["correct"] for r in capped])),
                    "uncapped_max_spent_over_ceiling": max(r["spent"] / r["ceiling"] for r in free),
                    "uncapped_truncated": sum(r["truncated"] for r in free),
                    "uncapped_accuracy": float(np.mean([r["correct"] for r in free])),
                }
            )
    return {"dataset": "arith-test", "per_level": args.per_level, "rows": rows}


def print_report(report: dict) -> None:
    if "pacing" in report:
        p = report["pacing"]
        print(f"\npacing (horizon {p['horizon']:g}): mean spend per problem, probe included")
        print("| set | mean budget | before | after | after, 16 in flight |")
        print("|---|---|---|---|---|")
        for r in p["rows"]:
            keys = ("before", "after", "after_16_in_flight")
            cells = [f"{r[k]:.1f} ({r[k] / r['mean_budget'] - 1:+.1%})" for k in keys]
            print(f"| {r['set']} ({r['problems']}) | {r['mean_budget']:g} | " + " | ".join(cells) + " |")
        print("\nrandom orders of arith-test, after: deviation of the mean spend from the mean budget")
        for o in p["random_orders"]:
            print(
                f"  {o['mean_budget']:g}, {o['in_flight']} in flight, {o['orders']} orders: "
                f"mean {o['mean_deviation']:+.1%}, worst {o['worst_deviation']:+.1%}"
            )
    if "ceilings" in report:
        c = report["ceilings"]
        print(f"\nceilings: arith-test, {c['per_level']} problems per level, zoo models")
        print(
            "| strategy | budget | max spent / ceiling | mean spent / ceiling | mean ceiling | truncated "
            "| uncapped: max spent / ceiling | uncapped: truncated |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for r in c["rows"]:
            print(
                f"| {r['strategy']} | {r['budget']} | {r['max_spent_over_ceiling']:.3f} | "
                f"{r['mean_spent_over_ceiling']:.3f} | {r['mean_ceiling']:.0f} | "
                f"{r['truncated']}/{r['problems']} | {r['uncapped_max_spent_over_ceiling']:.3f} | "
                f"{r['uncapped_truncated']}/{r['problems']} |"
            )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--table", default="arith-zoo", help="built-in table name or table JSON")
    p.add_argument(
        "--pools",
        type=Path,
        default=Path("benchmarks/results/planner/pools-arith-test.jsonl"),
        help="recorded pools of the test set (planner_efficiency.py writes them)",
    )
    p.add_argument("--mean-budgets", type=lambda s: [float(x) for x in s.split(",")], default=[60, 150, 500])
    p.add_argument("--horizon", type=float, default=PlannerConfig().spend_horizon, help="spend_horizon")
    p.add_argument("--orders", type=int, default=16, help="random orders of the test set to replay")
    p.add_argument("--strategies", default=STRATEGIES)
    p.add_argument("--budgets", type=lambda s: [int(x) for x in s.split(",")], default=[4, 16])
    p.add_argument("--per-level", type=int, default=3, help="arith-test problems per level (ceilings)")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--skip-pacing", action="store_true")
    p.add_argument("--skip-ceilings", action="store_true")
    models.add_arguments(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/budgets"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report: dict = {"date": time.strftime("%Y-%m-%d")}
    if not args.skip_pacing:
        table = load_table(args.table)
        if table.dataset == "arith-test":
            raise SystemExit("error: the table must be calibrated on another set than arith-test")
        print(f"pacing: replaying the {args.table} planner (calibrated on {table.dataset})")
        report["pacing"] = {"table": args.table, "calibrated_on": table.dataset, **pacing(args, table)}
    if not args.skip_ceilings:
        args.models, args.fmt = models.resolve_models(args, select_examples("arith-test", args.per_level))
        report["ceilings"] = ceilings(args)
    report["seconds"] = round(time.perf_counter() - start, 1)
    (args.out / "budgets.json").write_text(json.dumps(report, indent=1) + "\n")
    print_report(report)
    print(f"\n{report['seconds']:.0f} s; wrote {args.out / 'budgets.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
