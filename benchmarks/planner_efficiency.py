"""Is the compute-optimal planner worth it? Accuracy vs. mean compute on a test set for the
planner (tables calibrated on another set only) and for uniform strategies, in one run.

    python benchmarks/planner_efficiency.py --tables benchmarks/results/calibration/arith-calib
    python benchmarks/planner_efficiency.py --dataset chat-test --policy chat-policy --prm chat-prm \
        --prm-format qwen-prm --tables benchmarks/results/calibration/chat-calib \
        --out benchmarks/results/planner-chat

1. Records a pool per test problem (greedy decode + ``--samples`` temperature-1
   samples, PRM-scored), resumable; then adds what the tables' plans need (``--samples`` / 2
   samples at each other temperature they sample at, each tree-search plan run for real).
2. Uniform baselines on those pools: weighted best-of-N and majority vote at n = 1..32, and
   greedy; beam search runs for real (``--beam-budgets``) through the eval harness.
3. The planner, for every table (estimator) and the oracle, over a grid of mean budgets,
   replayed on the same pools (same samples for everyone: a paired comparison), probe costs
   included; and online, through the engines, at the low/medium/high budgets, to check that
   replay predicts what the service does.
4. Reports, against the **frontier of every uniform strategy, greedy included** (the upper
   concave hull of greedy, majority@n, weighted@n and beam@n: at any compute, the best any one
   of them, or a random mix of two, reaches) and against uniform weighted best-of-N alone:
   (a) the accuracy gain at equal compute, (b) the efficiency ratio: the compute the baseline
   needs to reach the planner's accuracy over the planner's, with 90% bootstrap intervals
   (problems resampled, paired), (c) both with oracle difficulty; Spearman of each estimator
   against oracle difficulty. Writes JSON and a plot.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nexus_ray.engines import build_policy_engine, build_reward_engine
from nexus_ray.jobs import models
from nexus_ray.jobs.eval import Job, interleave_levels, load_records, run_local, select_examples, solve_one
from nexus_ray.planner import replay
from nexus_ray.planner.allocate import Point, upper_hull
from nexus_ray.planner.difficulty import spearman
from nexus_ray.planner.execute import solve
from nexus_ray.planner.sampling import EngineSampler
from nexus_ray.planner.table import PlanTable
from nexus_ray.search.base import SearchContext
from nexus_ray.tasks.grading import is_equivalent

SIZES = (1, 2, 4, 8, 16, 32)


def point(results: list[replay.Result]) -> dict:
    return {
        "compute": float(np.mean([r.compute for r in results])),
        "accuracy": float(np.mean([r.correct for r in results])),
    }


def compute_to_reach(curve: list[dict], accuracy: float) -> float | None:
    """Least compute at which the curve (linearly interpolated, running max) reaches ``accuracy``;
    None if it never does."""
    pts = sorted((p["compute"], p["accuracy"]) for p in curve)
    best = -1.0
    prev = None
    for c, a in pts:
        if a >= accuracy:
            if prev is None or prev[1] >= accuracy:
                return c
            (c0, a0) = prev
            return c0 + (accuracy - a0) / (a - a0) * (c - c0)
        if a > best:
            best, prev = a, (c, a)
    return None


def accuracy_at(curve: list[dict], compute: float, flat_right: bool = False) -> float | None:
    """The curve's accuracy at ``compute`` (linear between measured points; None outside, or
    with ``flat_right`` its best past its dearest point: a frontier can always waste compute)."""
    pts = sorted((p["compute"], p["accuracy"]) for p in curve)
    if flat_right and compute > pts[-1][0]:
        return max(a for _, a in pts)
    if compute < pts[0][0] or compute > pts[-1][0]:
        return None
    return float(np.interp(compute, [c for c, _ in pts], [a for _, a in pts]))


def compare(planner: dict, weighted: list[dict], flat_right: bool = False) -> dict:
    need = compute_to_reach(weighted, planner["accuracy"])
    at = accuracy_at(weighted, planner["compute"], flat_right)
    top = max(p["compute"] for p in weighted)
    return {
        **planner,
        "weighted_accuracy_at_equal_compute": at,
        "accuracy_gain": None if at is None else planner["accuracy"] - at,
        "weighted_compute_to_match": need,
        # when weighted never gets there, the ratio is at least what its most expensive point cost
        "efficiency_ratio": (need / planner["compute"]) if need is not None else None,
        "efficiency_ratio_at_least": None if need is not None else top / planner["compute"],
    }


def frontier(points: dict[str, dict]) -> list[dict]:
    """The upper concave hull of uniform strategies' (compute, accuracy) points, each labelled."""
    hull = upper_hull([Point(p["compute"], p["accuracy"], i) for i, p in enumerate(points.values())])
    labels = list(points)
    return [{"strategy": labels[p.index], "compute": p.compute, "accuracy": p.accuracy} for p in hull]


def bootstrap(
    planner: list[replay.Result],
    baselines: dict[str, list[replay.Result]],
    draws: int = 1000,
    seed: int = 0,
    hull: bool = False,
) -> dict:
    """90% intervals of the efficiency ratio and the accuracy gain, resampling problems (paired:
    the planner and the baselines see the same resampled problems); ``hull``: against the
    frontier of all baselines, else against their curve (one strategy at several n)."""
    rng = np.random.default_rng(seed)
    pc, pa = np.array([r.compute for r in planner]), np.array([r.correct for r in planner], dtype=float)
    wc = {n: np.array([r.compute for r in rs]) for n, rs in baselines.items()}
    wa = {n: np.array([r.correct for r in rs], dtype=float) for n, rs in baselines.items()}
    ratios, gains = [], []
    for _ in range(draws):
        idx = rng.integers(0, len(planner), len(planner))
        points = {n: {"compute": wc[n][idx].mean(), "accuracy": wa[n][idx].mean()} for n in baselines}
        curve = frontier(points) if hull else list(points.values())
        mine = {"compute": pc[idx].mean(), "accuracy": pa[idx].mean()}
        need = compute_to_reach(curve, mine["accuracy"])
        ratios.append(math.inf if need is None else need / mine["compute"])
        at = accuracy_at(curve, mine["compute"], flat_right=hull)
        if at is not None:
            gains.append(mine["accuracy"] - at)
    lo, hi = np.percentile(ratios, [5, 95], method="nearest")  # inf: weighted never got there
    out = {"ratio_90ci": [float(lo), float(hi)]}
    if len(gains) > draws // 2:
        out["gain_90ci"] = [float(x) for x in np.percentile(gains, [5, 95])]
    return out


def record_pools(args, path: Path, tables: list[PlanTable]) -> list[replay.Recorded]:
    """A pool per test problem, with what the tables' plans need (samples at other
    temperatures, tree-search runs) added to pools that lack it; resumable."""
    examples = select_examples(args.dataset, args.per_level)
    done = {r["problem"] for r in load_records(path)}
    work = [e for e in interleave_levels(examples) if e.problem not in done]
    if work:
        print(f"recording {len(work)} {args.dataset} pools ({len(done)} done) -> {path}")
        solver = partial(replay.record_one, fmt=args.fmt, samples=args.samples, seed=args.seed + 1)
        run_local(args.models.policy, args.models.prm, solver, work, path, args.concurrency)
    wanted = {e.problem for e in examples}
    recs = [r for r in replay.load_pools(path) if r.pool.problem in wanted]
    temperatures, runs = replay.needs(tables)
    lacking = replay.lacking(recs, temperatures, runs)
    if lacking:
        side = path.with_name(path.stem + "-completing.jsonl")
        finished = {r["problem"] for r in load_records(side)}
        todo = [r for r in lacking if r.pool.problem not in finished]
        labels = [f"t={t:g}" for t in temperatures] + [o.label for o in runs]
        print(f"adding {', '.join(labels)} to {len(todo)} pools the tables' plans need them in -> {side}")
        solver = partial(
            replay.complete_one,
            fmt=args.fmt,
            samples=args.samples // 2,
            seed=args.seed + 1,
            temperatures=temperatures,
            runs=runs,
        )
        run_local(args.models.policy, args.models.prm, solver, todo, side, args.concurrency)
        completed = {
            json.loads(line)["problem"]: line for line in side.read_text().splitlines() if line.strip()
        }
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        merged = [completed.get(json.loads(line)["problem"], line) for line in lines]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n".join(merged) + "\n")
        tmp.replace(path)
        side.unlink()
        recs = [r for r in replay.load_pools(path) if r.pool.problem in wanted]
    return recs


def beam_points(
    args, path: Path, recs: list[replay.Recorded]
) -> tuple[list[dict], dict[int, list[replay.Result]]]:
    """Beam search for real (it cannot be replayed from complete samples), through the eval
    harness: its points, and per budget its results in the order of ``recs``."""
    examples = {e.problem: e for e in select_examples(args.dataset, args.per_level)}
    jobs = [Job("beam", b) for b in args.beam_budgets]
    done = {(r["problem"], r["budget"]) for r in load_records(path)}
    work = [
        (examples[r.pool.problem], j) for r in recs for j in jobs if (r.pool.problem, j.budget) not in done
    ]
    if work:
        print(f"running beam search on {len(work)} (problem, budget) pairs -> {path}")
        solver = partial(solve_one, fmt=args.fmt, seed=args.seed, overrides={}, token_cap_per_generation=None)
        run_local(args.models.policy, args.models.prm, solver, work, path, args.concurrency)
    records = {(r["problem"], r["budget"]): r for r in load_records(path) if r["problem"] in examples}
    out, results = [], {}
    for b in args.beam_budgets:
        rs = [records[(r.pool.problem, b)] for r in recs]
        results[b] = [replay.Result(r["correct"], r["ledger"]["policy_token_equivalents"]) for r in rs]
        out.append({"n": b, **point(results[b]), "problems": len(rs)})
    return out, results


def online(args, table: PlanTable, budgets: list[float], recs: list[replay.Recorded]) -> list[dict]:
    """The planner through the engines, as the service runs it (other samples than the pools)."""
    policy, prm = build_policy_engine(args.models.policy), build_reward_engine(args.models.prm)
    gold = {r.pool.problem: r.gold for r in recs}

    async def run_all(budget: float) -> list[replay.Result]:
        alloc = table.allocate(budget)
        sem = asyncio.Semaphore(args.concurrency)

        async def one(problem: str) -> replay.Result:
            async with sem:
                ctx = SearchContext.for_problem(policy, prm, args.fmt, problem, None, args.seed + 2)
                ledger = ctx.new_ledger()
                planned = await solve(EngineSampler(ctx), problem, table, alloc, ledger)
            return replay.Result(
                is_equivalent(planned.outcome.answer, gold[problem], args.fmt.answer_kind),
                ledger.policy_token_equivalents,
                planned,
            )

        return list(await asyncio.gather(*(one(p) for p in gold)))

    out = []
    try:
        for b in budgets:
            start = time.perf_counter()
            results = asyncio.run(run_all(b))
            out.append({"mean_budget": b, **point(results), "seconds": round(time.perf_counter() - start, 1)})
            print(
                f"  online planner at mean budget {b:.0f}: accuracy {out[-1]['accuracy']:.3f}, "
                f"compute {out[-1]['compute']:.0f}"
            )
    finally:
        policy.shutdown()
        prm.shutdown()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--tables",
        type=Path,
        default=Path("benchmarks/results/calibration/arith-calib"),
        help="folder with table-<estimator>.json from nexus-ray calibrate on arith-calib",
    )
    p.add_argument("--estimators", default="learned,probe,surprisal")
    p.add_argument("--online-estimator", default="surprisal", help="the table run online through the engines")
    p.add_argument(
        "--budgets", default="60,150,500", help="low, medium, high mean budgets (policy-token equivalents)"
    )
    p.add_argument("--beam-budgets", type=lambda s: [int(x) for x in s.split(",") if x], default=[4, 16])
    p.add_argument("--samples", type=int, default=32, help="temperature-1 samples per test pool")
    p.add_argument("--per-level", type=int, default=None)
    p.add_argument("--concurrency", type=int, default=48)
    p.add_argument("--dataset", default="arith-test", help="the test set (never the calibration set)")
    models.add_arguments(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/planner"))
    args = p.parse_args(argv)
    args.models, args.fmt = models.resolve_models(args, select_examples(args.dataset, args.per_level))
    args.out.mkdir(parents=True, exist_ok=True)
    tables = {}
    for name in [*args.estimators.split(","), "oracle"]:
        tables[name] = PlanTable.load(args.tables / f"table-{name}.json")
        tables[name].check_models(args.models.policy.model, args.models.prm.model)
        if tables[name].dataset == args.dataset:
            raise SystemExit(f"error: the tables must be calibrated on another set than {args.dataset}")
    budgets = [float(b) for b in args.budgets.split(",")]

    recs = record_pools(args, args.out / f"pools-{Path(args.dataset).stem}.jsonl", list(tables.values()))
    beam, beam_results = beam_points(args, args.out / "beam-records.jsonl", recs)
    print(f"{len(recs)} {args.dataset} problems; baselines and planner replays")
    sizes = [n for n in SIZES if n <= min(len(r.pool.samples) for r in recs)]
    weighted_results = {n: replay.uniform_results(recs, "weighted", n) for n in sizes}
    majority_results = {n: replay.uniform_results(recs, "majority", n) for n in sizes}
    weighted = [{"n": n, **point(rs)} for n, rs in weighted_results.items()]
    majority = [{"n": n, **point(rs)} for n, rs in majority_results.items()]
    stop = tables["surprisal"] if "surprisal" in tables else tables["oracle"]
    greedy_results = replay.planned_results(
        recs, stop, stop.allocate(0.0)
    )  # every bin stops at the greedy probe
    greedy = point(greedy_results)
    uniform = {
        "greedy": greedy_results,
        **{f"weighted@{n}": rs for n, rs in weighted_results.items()},
        **{f"majority@{n}": rs for n, rs in majority_results.items()},
        **{f"beam@{n}": rs for n, rs in beam_results.items()},
    }
    best_uniform = frontier({name: point(rs) for name, rs in uniform.items()})

    oracle_diff = [1 - r.pass_at_1 for r in recs]
    grid = sorted(set(np.geomspace(40, 4000, 24).round(1).tolist()) | set(budgets))
    curves, ranking, at_budgets = {}, {}, {}
    for name, table in tables.items():
        ranking[name] = spearman(replay.difficulties(recs, table.estimator), oracle_diff)
        curves[name], at_budgets[name] = [], []
        for b in grid:
            results = replay.planned_results(recs, table, table.allocate(b))
            curves[name].append({"mean_budget": b, **point(results)})
            if b in budgets:
                plans = {}
                for r in results:
                    plans[r.planned.option.label] = plans.get(r.planned.option.label, 0) + 1
                vs_frontier = compare(curves[name][-1], best_uniform, flat_right=True)
                at_budgets[name].append(
                    {
                        **compare(curves[name][-1], weighted),
                        **bootstrap(results, weighted_results),
                        "vs_frontier": {
                            "accuracy_at_equal_compute": vs_frontier["weighted_accuracy_at_equal_compute"],
                            "accuracy_gain": vs_frontier["accuracy_gain"],
                            "compute_to_match": vs_frontier["weighted_compute_to_match"],
                            "efficiency_ratio": vs_frontier["efficiency_ratio"],
                            "efficiency_ratio_at_least": vs_frontier["efficiency_ratio_at_least"],
                            **bootstrap(results, uniform, hull=True),
                        },
                        "plans": plans,
                    }
                )
    print(f"online: the {args.online_estimator} planner through the engines")
    online_points = online(args, tables[args.online_estimator], budgets, recs)

    report = {
        "date": time.strftime("%Y-%m-%d"),
        "dataset": args.dataset,
        "problems": len(recs),
        "samples_per_pool": args.samples,
        "budgets": budgets,
        "greedy": greedy,
        "weighted": weighted,
        "majority": majority,
        "beam": beam,
        "uniform_frontier": best_uniform,
        "spearman_vs_oracle": ranking,
        "planner_curves": curves,
        "planner_at_budgets": at_budgets,
        "online": {
            "estimator": args.online_estimator,
            "points": [compare(o, weighted) for o in online_points],
        },
        "tables": {name: str(args.tables / f"table-{name}.json") for name in tables},
    }
    (args.out / "planner_efficiency.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(report, args.out / "planner_efficiency.png")
    print_report(report)
    return 0


def _ratio(row: dict) -> str:
    if row["efficiency_ratio"] is not None:
        return f"{row['efficiency_ratio']:.1f}x"
    return f">{row['efficiency_ratio_at_least']:.1f}x (never reached)"


def print_report(report: dict) -> None:
    print(
        f"\n{report['problems']} {report['dataset']} problems; greedy {report['greedy']['accuracy']:.3f} "
        f"at {report['greedy']['compute']:.0f}"
    )
    print(
        "uniform weighted best-of-N: "
        + ", ".join(f"n={p['n']} {p['accuracy']:.3f}@{p['compute']:.0f}" for p in report["weighted"])
    )
    print(
        "uniform majority:           "
        + ", ".join(f"n={p['n']} {p['accuracy']:.3f}@{p['compute']:.0f}" for p in report["majority"])
    )
    print(
        "beam search:                "
        + ", ".join(f"n={p['n']} {p['accuracy']:.3f}@{p['compute']:.0f}" for p in report["beam"])
    )
    print(
        "frontier of uniform strategies (greedy included): "
        + ", ".join(
            f"{p['strategy']} {p['accuracy']:.3f}@{p['compute']:.0f}" for p in report["uniform_frontier"]
        )
    )
    print(
        "Spearman vs oracle difficulty: "
        + ", ".join(f"{k} {v:+.3f}" for k, v in report["spearman_vs_oracle"].items())
    )
    print(
        f"\n{'planner':<10} {'budget':>7} {'compute':>8} {'accuracy':>8} {'weighted@=':>10} {'gain':>7} "
        f"{'ratio':>24} {'ratio 90% CI':>14}  plans"
    )
    for name, rows in report["planner_at_budgets"].items():
        for r in rows:
            at = (
                "-"
                if r["weighted_accuracy_at_equal_compute"] is None
                else f"{r['weighted_accuracy_at_equal_compute']:.3f}"
            )
            gain = "-" if r["accuracy_gain"] is None else f"{r['accuracy_gain']:+.3f}"
            ci = "-".join("never" if math.isinf(x) else f"{x:.1f}" for x in r["ratio_90ci"])
            print(
                f"{name:<10} {r['mean_budget']:>7.0f} {r['compute']:>8.0f} {r['accuracy']:>8.3f} "
                f"{at:>10} {gain:>7} {_ratio(r):>24} {ci:>14}  {r['plans']}"
            )
            f = r["vs_frontier"]
            f_at = "-" if f["accuracy_at_equal_compute"] is None else f"{f['accuracy_at_equal_compute']:.3f}"
            f_gain = "-" if f["accuracy_gain"] is None else f"{f['accuracy_gain']:+.3f}"
            f_ratio = (
                f"{f['efficiency_ratio']:.2f}x"
                if f["efficiency_ratio"] is not None
                else f">{f['efficiency_ratio_at_least']:.2f}x (never reached)"
            )
            f_ci = "-".join("never" if math.isinf(x) else f"{x:.2f}" for x in f["ratio_90ci"])
            gain_ci = "-" if "gain_90ci" not in f else "[{:+.3f}, {:+.3f}]".format(*f["gain_90ci"])
            print(
                f"{'  frontier':<10} {'':>7} {'':>8} {'':>8} {f_at:>10} {f_gain:>7} {f_ratio:>24} "
                f"{f_ci:>14}  gain 90% CI {gain_ci}"
            )
    for r in report["online"]["points"]:
        print(
            f"{'online':<10} {r['mean_budget']:>7.0f} {r['compute']:>8.0f} {r['accuracy']:>8.3f} "
            f"{'':>10} {'':>7} {_ratio(r):>24}"
        )


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for key, style in (("weighted", "o-"), ("majority", "s-"), ("beam", "^-")):
        pts = report[key]
        ax.plot(
            [p["compute"] for p in pts],
            [p["accuracy"] for p in pts],
            style,
            label=f"uniform {key}",
            alpha=0.8,
        )
    g = report["greedy"]
    ax.plot([g["compute"]], [g["accuracy"]], "k*", markersize=12, label="greedy")
    hull = report["uniform_frontier"]
    ax.plot(
        [p["compute"] for p in hull],
        [p["accuracy"] for p in hull],
        ":",
        color="black",
        linewidth=2.5,
        label="best uniform strategy (frontier, greedy included)",
    )
    for name, curve in report["planner_curves"].items():
        ax.plot(
            [p["compute"] for p in curve],
            [p["accuracy"] for p in curve],
            "--" if name == "oracle" else "-",
            linewidth=2,
            label=f"planner ({name} difficulty)",
        )
    on = report["online"]["points"]
    ax.plot(
        [p["compute"] for p in on],
        [p["accuracy"] for p in on],
        "rX",
        markersize=10,
        label=f"planner online ({report['online']['estimator']})",
    )
    ax.set_xscale("log")
    ax.set_xlabel("mean compute per problem (policy-token equivalents, probes included)")
    ax.set_ylabel("accuracy")
    ax.set_title(
        f"{report['dataset']} ({report['problems']} problems): planner vs. uniform test-time compute"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
