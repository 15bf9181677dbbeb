"""Small policy + test-time compute vs. a policy four times its size ("Can 1B LLM Surpass 405B?").

    python benchmarks/small_vs_large.py \
        --small arith-policy-small --small-tables benchmarks/results/calibration/arith-calib-small \
        --large arith-policy --large-tables benchmarks/results/calibration/arith-calib-rewrite \
        --large-pools benchmarks/results/planner-rewrite/pools-arith-test.jsonl   # recorded already

For each policy (the same PRM reads both), on the test set: a pool per problem (greedy decode
and ``--samples`` temperature-1 samples, PRM-scored; resumable), then on those pools greedy,
uniform PRM-weighted best-of-N and majority at n = 2..samples, and the planner (the policy's
own table, calibrated on another set) over a grid of mean budgets. Compute is in FLOPs, PRM
included (the ledger's 2 x parameters x tokens per model), so the two policies compare on one
axis. Reports where the small policy with compute first reaches the large one's greedy
accuracy, and the large one with the planner, and at what FLOPs. Writes JSON and a plot.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nexus_ray.config import DEFAULT_PRM, local_models
from nexus_ray.jobs.eval import interleave_levels, load_records, run_local, select_examples
from nexus_ray.planner import replay
from nexus_ray.planner.table import PlanTable
from nexus_ray.tasks.format import ARITH

SIZES = (2, 4, 8, 16)


def flops_point(results: list[replay.Result], policy_parameters: int, label: str) -> dict:
    """Mean accuracy and mean FLOPs per problem (policy-token equivalents x 2 x policy size)."""
    return {
        "strategy": label,
        "accuracy": float(np.mean([r.correct for r in results])),
        "flops": float(np.mean([r.compute for r in results])) * 2 * policy_parameters,
    }


def flops_to_reach(curve: list[dict], accuracy: float) -> float | None:
    """Least FLOPs at which any point of ``curve`` reaches ``accuracy`` (None: none does)."""
    reached = [p["flops"] for p in curve if p["accuracy"] >= accuracy]
    return min(reached) if reached else None


def pools(args, policy: str, table: PlanTable, path: Path) -> list[replay.Recorded]:
    """A pool per test problem with what ``table``'s plans need (samples at its temperatures,
    its tree-search runs); resumable. Pools recorded elsewhere must already hold all of it."""
    examples = select_examples(args.dataset, args.per_level)
    temperatures, runs = replay.needs([table])
    done = {r["problem"] for r in load_records(path)}
    work = [e for e in interleave_levels(examples) if e.problem not in done]
    models = local_models("hf", policy, args.prm)
    if work:
        print(f"recording {len(work)} {args.dataset} pools for {policy} ({len(done)} done) -> {path}")
        solver = partial(
            replay.record_one,
            fmt=ARITH,
            samples=args.samples,
            seed=args.seed,
            temperatures=temperatures,
            runs=runs,
        )
        run_local(models.policy, models.prm, solver, work, path, args.concurrency)
    wanted = {e.problem for e in examples}
    recs = [r for r in replay.load_pools(path) if r.pool.problem in wanted]
    lacking = replay.lacking(recs, temperatures, runs)
    if lacking:
        raise SystemExit(
            f"{path}: {len(lacking)} pools lack what {policy}'s table can choose "
            f"(temperatures {temperatures}, runs {[o.label for o in runs]})"
        )
    return recs


def measure(args, policy: str, tables: Path, pool_file: Path | None) -> dict:
    table = PlanTable.load(tables / f"table-{args.estimator}.json")
    table.check_models(policy, args.prm)
    recs = pools(args, policy, table, pool_file or args.out / f"pools-{policy}.jsonl")
    params = recs[0].policy_parameters
    greedy = flops_point(replay.planned_results(recs, table, table.allocate(0.0)), params, "greedy")
    weighted = [
        flops_point(replay.uniform_results(recs, "weighted", n), params, f"weighted@{n}") for n in SIZES
    ]
    majority = [
        flops_point(replay.uniform_results(recs, "majority", n), params, f"majority@{n}") for n in SIZES
    ]
    planner = []
    for budget in args.budgets:
        results = replay.planned_results(recs, table, table.allocate(budget))
        planner.append({"mean_budget": budget, **flops_point(results, params, f"planner@{budget:g}")})
    return {
        "policy": policy,
        "parameters": params,
        "problems": len(recs),
        "greedy": greedy,
        "weighted": weighted,
        "majority": majority,
        "planner": planner,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--small", default="arith-policy-small")
    p.add_argument("--large", default="arith-policy")
    p.add_argument("--prm", default=DEFAULT_PRM["hf"], help="the checker both policies share (%(default)s)")
    p.add_argument(
        "--small-tables", type=Path, default=Path("benchmarks/results/calibration/arith-calib-small")
    )
    p.add_argument(
        "--large-tables", type=Path, default=Path("benchmarks/results/calibration/arith-calib-rewrite")
    )
    p.add_argument(
        "--large-pools",
        type=Path,
        default=None,
        help="the large policy's pools recorded already (e.g. by planner_efficiency.py, same seed)",
    )
    p.add_argument("--estimator", default="learned", help="which table-<estimator>.json of each folder")
    p.add_argument(
        "--budgets",
        type=lambda s: [float(x) for x in s.split(",") if x],
        default=[60.0, 150.0, 500.0, 1500.0],
        help="the planner's mean budgets, in each policy's own token equivalents",
    )
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--dataset", default="arith-test")
    p.add_argument("--per-level", type=int, default=None)
    p.add_argument("--concurrency", type=int, default=48)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/small_vs_large"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    small = measure(args, args.small, args.small_tables, None)
    large = measure(args, args.large, args.large_tables, args.large_pools)
    target = large["greedy"]["accuracy"]
    small_curve = [small["greedy"], *small["weighted"], *small["majority"], *small["planner"]]
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "dataset": args.dataset,
        "prm": args.prm,
        "small": small,
        "large": large,
        "small_planner_flops_to_reach_large_greedy": flops_to_reach(small["planner"], target),
        "small_any_flops_to_reach_large_greedy": flops_to_reach(small_curve, target),
        "large_greedy_flops": large["greedy"]["flops"],
        "small_planner_flops_to_reach_large_planner": {
            f"{q['mean_budget']:g}": flops_to_reach(small["planner"], q["accuracy"]) for q in large["planner"]
        },
        "seconds": round(time.time() - start, 1),
    }
    (args.out / "small_vs_large.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(report, args.out / "small_vs_large.png")
    print_report(report)
    return 0


def print_report(report: dict) -> None:
    print("\n| policy | parameters | strategy | accuracy | FLOPs per problem |")
    print("|---|---|---|---|---|")
    for key in ("small", "large"):
        r = report[key]
        for pt in [r["greedy"], *r["weighted"], *r["planner"]]:
            row = f"{pt['strategy']} | {pt['accuracy']:.3f} | {pt['flops']:.3g}"
            print(f"| {r['policy']} | {r['parameters']:,} | {row} |")
    large = report["large_greedy_flops"]
    reach = report["small_planner_flops_to_reach_large_greedy"]
    verdict = (
        f"small + planner reaches it at {reach:.3g} FLOPs ({reach / large:.1f}x)"
        if reach
        else "small + planner never reaches it at these budgets"
    )
    print(f"\nlarge greedy: {report['large']['greedy']['accuracy']:.3f} at {large:.3g} FLOPs; {verdict}")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for key, color in (("small", "tab:orange"), ("large", "tab:blue")):
        r = report[key]
        name = f"{r['policy']} ({r['parameters'] / 1e6:.2f}M)"
        ax.plot(
            [r["greedy"]["flops"], *(p["flops"] for p in r["planner"])],
            [r["greedy"]["accuracy"], *(p["accuracy"] for p in r["planner"])],
            "-o",
            color=color,
            label=f"{name}: greedy, then planner",
        )
        ax.plot(
            [p["flops"] for p in r["weighted"]],
            [p["accuracy"] for p in r["weighted"]],
            ":s",
            color=color,
            alpha=0.6,
            label=f"{name}: uniform weighted@n",
        )
        ax.plot([r["greedy"]["flops"]], [r["greedy"]["accuracy"]], "*", color=color, markersize=14)
    ax.set_xscale("log")
    ax.set_xlabel("FLOPs per problem (policy and PRM)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{report['dataset']}: small policy + test-time compute vs. large policy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
