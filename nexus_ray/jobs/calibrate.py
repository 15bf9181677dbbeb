"""Calibrate the planner: record sample pools on a calibration set, build the plan table.

    nexus-ray calibrate --dataset arith-calib --estimator learned
    ray job submit --working-dir . -- python -m nexus_ray.jobs.calibrate --dataset arith-calib --workers 4

    nexus-ray calibrate --dataset arith-calib --strategies beam,dvts --run-sizes 4,16 --temperatures 1.0,0.7

Step 1 records, per problem, the greedy decode and ``--samples`` temperature-1 samples, all
PRM-scored, ``--samples`` more at each other of ``--temperatures``, and each of
``--strategies`` (tree search, particles, ...) run for real at each of ``--run-sizes``
generations (``pools.jsonl``, appended as they finish; ``--resume`` continues). It runs on the
eval harness's runners: in this process, or with ``--workers N`` as Ray tasks over shared
policy and PRM workers. Step 2 replays every plan of the menu on every pool (probe included,
priced by the same ledger as online), bins problems by the estimator's difficulty, picks the
best plan per (bin, budget) with two-fold cross-validation and writes ``table-<estimator>.json``
plus ``curves-<estimator>.png``. Point a service at the table with ``planner.table``.
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path

from nexus_ray.cluster import ray_session
from nexus_ray.config import ModelsConfig
from nexus_ray.jobs import models
from nexus_ray.jobs.eval import interleave_levels, load_records, run_local, run_on_ray, select_examples
from nexus_ray.planner import replay
from nexus_ray.planner.calibrate import build_table, run_options
from nexus_ray.planner.table import ModelStamp, PlanTable, model_fingerprint
from nexus_ray.tasks import datasets
from nexus_ray.tasks.format import TaskFormat

ESTIMATORS = ("probe", "surprisal", "learned", "oracle")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nexus-ray calibrate", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument(
        "--dataset", default="arith-calib", help="built-in set or JSONL path; never the set you evaluate on"
    )
    p.add_argument(
        "--estimator",
        default="learned",
        help="comma list of probe, surprisal, learned, oracle (oracle: benchmarks only)",
    )
    p.add_argument("--bins", type=int, default=5, help="difficulty bins (equal-count quantiles)")
    p.add_argument(
        "--sizes", default="4,8,16,32", help="sample counts of the majority/weighted plans in the menu"
    )
    p.add_argument(
        "--samples", type=int, default=31, help="temperature-1 samples recorded per problem (>= max size - 1)"
    )
    p.add_argument(
        "--temperatures",
        default="1.0",
        help="sampling temperatures of the majority/weighted plans (pools record --samples at each)",
    )
    p.add_argument(
        "--strategies",
        default="",
        help="strategies run for real per problem and offered as plans (e.g. beam,dvts,mcts,particles)",
    )
    p.add_argument(
        "--run-sizes", default=None, help="generations of each --strategies plan (default: --sizes)"
    )
    p.add_argument("--no-early-exit", action="store_true", help="never stop early on a unanimous probe")
    p.add_argument("--per-level", type=int, default=None, help="use only the first N problems of each level")
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="N Ray tasks in flight over shared model workers (0: this process)",
    )
    p.add_argument("--concurrency", type=int, default=32, help="problems in flight per process")
    models.add_arguments(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", type=Path, default=None, help="output folder (default: results/calibration/<dataset>)"
    )
    p.add_argument(
        "--resume", action="store_true", help="keep the pools already recorded in the output folder"
    )
    return p


def record(args, config: ModelsConfig, examples: list[datasets.Example], fmt: TaskFormat, path: Path) -> None:
    done = {r["problem"] for r in load_records(path)}
    work = [e for e in interleave_levels(examples) if e.problem not in done]
    print(f"{len(examples)} problems, {len(done)} pools recorded before, {len(work)} to go -> {path}")
    if not work:
        return
    solver = partial(
        replay.record_one,
        fmt=fmt,
        samples=args.samples,
        seed=args.seed,
        temperatures=args.temperature_list,
        runs=args.runs,
    )
    if args.workers > 0:
        with ray_session():
            run_on_ray(args.workers, config.policy, config.prm, solver, work, path, args.concurrency)
    else:
        run_local(config.policy, config.prm, solver, work, path, args.concurrency)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        estimators = [e.strip() for e in args.estimator.split(",") if e.strip()]
        unknown = [e for e in estimators if e not in ESTIMATORS]
        if unknown or not estimators:
            raise ValueError(f"unknown estimator(s) {unknown}: choose from {', '.join(ESTIMATORS)}")
        sizes = tuple(int(s) for s in args.sizes.split(",") if s.strip())
        if not sizes or max(sizes) > args.samples + 1:
            raise ValueError(f"--sizes {args.sizes} needs --samples >= {max(sizes or (2,)) - 1}")
        if args.bins < 1:
            raise ValueError("--bins must be >= 1")
        args.temperature_list = tuple(float(t) for t in args.temperatures.split(",") if t.strip())
        if not args.temperature_list or not all(0 < t <= 2 for t in args.temperature_list):
            raise ValueError(f"--temperatures {args.temperatures!r}: a comma list of numbers in (0, 2]")
        run_sizes = [int(s) for s in (args.run_sizes or args.sizes).split(",") if s.strip()]
        strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
        args.runs = run_options(strategies, run_sizes)
        examples = select_examples(args.dataset, args.per_level)
        config, fmt = models.resolve_models(args, examples)
        stamps = (
            ModelStamp(name=config.policy.model, fingerprint=model_fingerprint(config.policy.model)),
            ModelStamp(name=config.prm.model, fingerprint=model_fingerprint(config.prm.model)),
        )
    except (ValueError, FileNotFoundError, datasets.DatasetError) as err:
        print(f"error: {err}")
        return 2
    out = args.out or Path("results") / "calibration" / Path(args.dataset).stem
    out.mkdir(parents=True, exist_ok=True)
    pools_path = out / "pools.jsonl"
    if pools_path.exists() and pools_path.stat().st_size and not args.resume:
        print(
            f"error: {pools_path} already holds pools; pass --resume to extend them, or choose another --out"
        )
        return 2
    start = time.perf_counter()
    record(args, config, examples, fmt, pools_path)
    wanted = {e.problem for e in examples}
    recs = [r for r in replay.load_pools(pools_path) if r.pool.problem in wanted]
    print(f"recorded {len(recs)} pools in {time.perf_counter() - start:.0f} s; building tables")
    for name in estimators:
        try:
            table = build_table(
                recs,
                name,
                dataset=args.dataset,
                seed=args.seed,
                policy=stamps[0],
                prm=stamps[1],
                bins=args.bins,
                sizes=sizes,
                early_exit=not args.no_early_exit,
                temperatures=args.temperature_list,
                runs=args.runs,
            )
        except ValueError as err:
            print(f"error: {err}")
            return 2
        path = out / f"table-{name}.json"
        table.save(path)
        plot_curves(table, out / f"curves-{name}.png")
        print_table(table)
        print(f"wrote {path}")
    return 0


def print_table(table: PlanTable) -> None:
    print(
        f"\nestimator {table.estimator.name}: Spearman vs oracle difficulty on {table.dataset} "
        f"{table.spearman_vs_oracle:+.3f}; bins at {[round(e, 3) for e in table.edges]}"
    )
    budgets = [c.budget for c in table.bins[0].choices]
    print("bin  problems  " + "  ".join(f"{'budget ' + str(b):>24}" for b in budgets))
    for i, b in enumerate(table.bins):
        cells = [f"{c.option.label:>11} {c.cv_accuracy:.2f}@{c.compute:<6.0f}" for c in b.choices]
        print(f"{i:>3}  {b.problems:>8}  " + "  ".join(f"{x:>24}" for x in cells))


def plot_curves(table: PlanTable, path: Path) -> None:
    """Per bin: every plan's accuracy vs compute, and the chosen per-budget curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, b in enumerate(table.bins):
        (line,) = ax.plot(
            [c.compute for c in b.choices],
            [c.cv_accuracy for c in b.choices],
            marker="o",
            label=f"bin {i} ({b.problems} problems)",
        )
        ax.scatter(
            [o.compute for o in b.options],
            [o.accuracy for o in b.options],
            s=8,
            color=line.get_color(),
            alpha=0.4,
        )
    ax.set_xscale("log")
    ax.set_xlabel("mean compute per problem (policy-token equivalents, probe included)")
    ax.set_ylabel("accuracy (lines: chosen plans, cross-validated; dots: every plan)")
    ax.set_title(f"plan table, {table.estimator.name} estimator, {table.dataset}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
