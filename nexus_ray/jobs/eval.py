"""The evaluation harness: strategies x budgets over a dataset, accuracy against compute.

    nexus-ray eval --dataset arith-test --strategy beam,weighted --budget 4,16,64
    ray job submit -- python -m nexus_ray.jobs.eval --dataset arith-test --strategy beam --workers 4

Writes ``results/<run>/``: ``records.jsonl`` (one line per problem x strategy x budget:
answer, correct, ledger, level), ``summary.json`` (accuracy and mean compute per strategy x
budget x level) and ``accuracy_vs_compute.png``. Records are appended as they finish, so an
interrupted run keeps what it did, and ``--resume`` finishes it. ``--workers N`` fans the
work out over Ray tasks (local Ray, or the cluster at RAY_ADDRESS) that share one policy and
one PRM worker deployment, the same workers the service runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from tqdm import tqdm

from nexus_ray.cluster import ray_session
from nexus_ray.config import EngineConfig, RewardConfig
from nexus_ray.jobs import models
from nexus_ray.search import registry
from nexus_ray.search.base import SearchContext
from nexus_ray.search.ledger import Budget
from nexus_ray.tasks import datasets
from nexus_ray.tasks.format import TaskFormat
from nexus_ray.tasks.grading import is_equivalent


@dataclass(frozen=True)
class Job:
    strategy: str
    budget: int | None  # generations; None for a strategy that takes none (greedy)


def plan_jobs(strategies: list[str], budgets: list[int]) -> list[Job]:
    jobs = []
    for s in strategies:
        strategy, _ = registry.get(s)  # fail early on unknown names
        jobs += [Job(s, b) for b in budgets] if strategy.takes_budget else [Job(s, None)]
    return jobs


def select_examples(dataset: str, limit_per_level: int | None) -> list[datasets.Example]:
    examples = datasets.load(dataset)
    if limit_per_level is None:
        return examples
    counts: dict[Any, int] = defaultdict(int)
    out = []
    for e in examples:
        if counts[e.level] < limit_per_level:
            counts[e.level] += 1
            out.append(e)
    return out


def interleave_levels(examples: list[datasets.Example]) -> list[datasets.Example]:
    """The first problem of each level, then the second of each, and so on."""
    by_level: dict[Any, list[datasets.Example]] = defaultdict(list)
    for e in examples:
        by_level[e.level].append(e)
    rounds = max((len(v) for v in by_level.values()), default=0)
    return [v[i] for i in range(rounds) for v in by_level.values() if i < len(v)]


async def solve_one(
    policy,
    prm,
    item: tuple[datasets.Example, Job],
    *,
    fmt: TaskFormat,
    seed: int,
    overrides: dict,
    token_cap_per_generation: float | None,
) -> dict:
    example, job = item
    budget = None
    if token_cap_per_generation and job.budget:
        budget = Budget(token_cap_per_generation * job.budget)
    ctx = SearchContext.for_problem(policy, prm, fmt, example.problem, budget, seed)
    start = time.perf_counter()
    result = await registry.run(job.strategy, ctx, job.budget, overrides.get(job.strategy))
    return {
        "problem": example.problem,
        "gold": example.answer,
        "level": example.level,
        "strategy": job.strategy,
        "budget": job.budget,
        "answer": result.answer,
        "correct": is_equivalent(result.answer, example.answer, fmt.answer_kind),
        "truncated": result.truncated,
        "ledger": result.ledger.to_dict(),
        "seconds": round(time.perf_counter() - start, 3),
    }


def load_records(path: Path) -> list[dict]:
    """The records a previous (maybe interrupted) run wrote; a half-written last line is dropped."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


Solver = Callable[[Any, Any, Any], Awaitable[dict]]  # (policy, prm, work item) -> record


async def solve_all(
    policy,
    prm,
    solver: Solver,
    work: list,
    out: Path | None,
    concurrency: int,
    progress: bool,
) -> list[dict]:
    """``solver`` on every work item, ``concurrency`` at a time, so their engine calls batch
    together; records are appended to ``out`` as they finish."""
    records: list[dict] = []
    sem = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(work), desc="eval", unit="solve", disable=not progress)

    async def one(item):
        async with sem:
            rec = await solver(policy, prm, item)
        records.append(rec)
        if out is not None:
            with out.open("a") as fh:
                fh.write(json.dumps(rec) + "\n")
        bar.update(1)

    await asyncio.gather(*(one(item) for item in work))
    bar.close()
    return records


def run_local(
    policy_cfg: EngineConfig,
    prm_cfg: RewardConfig,
    solver: Solver,
    work: list,
    out: Path | None,
    concurrency: int = 16,
) -> list[dict]:
    """Run ``solver`` on every work item in this process, on engines it loads."""
    from nexus_ray.engines import build_policy_engine, build_reward_engine

    policy = build_policy_engine(policy_cfg)
    prm = build_reward_engine(prm_cfg)
    try:
        return asyncio.run(solve_all(policy, prm, solver, work, out, concurrency, True))
    finally:
        policy.shutdown()
        prm.shutdown()


def run_on_ray(
    workers: int,
    policy_cfg: EngineConfig,
    prm_cfg: RewardConfig,
    solver: Solver,
    work: list,
    out: Path,
    concurrency: int = 16,
) -> list[dict]:
    """Fan the work items out over Ray tasks that share one policy and one PRM worker deployment.

    The models load once, in the same ``PolicyWorker`` / ``RewardWorker`` the service uses;
    up to ``workers`` tasks run at a time, each solving a small chunk through engine proxies,
    so the workers see batches from all of them. Records are written as each chunk returns,
    which is what ``--resume`` picks up after an interruption.
    """
    import uuid

    import ray
    from ray import serve

    from nexus_ray.config import WorkerConfig
    from nexus_ray.serving.workers import PolicyWorker, RewardWorker, connect, worker_options

    serve.start(proxy_location="Disabled")  # no-op when Serve already runs (e.g. the service)
    tag = uuid.uuid4().hex[:6]
    cpus = max(0.1, min(1.0, ray.available_resources().get("CPU", 1) / 4))
    worker = WorkerConfig(num_cpus=cpus)
    policy = serve.run(
        PolicyWorker.options(**worker_options(policy_cfg, worker)).bind(policy_cfg.model_dump()),
        name=f"eval-policy-{tag}",
        route_prefix=None,
    )
    prm = serve.run(
        RewardWorker.options(**worker_options(prm_cfg, worker)).bind(prm_cfg.model_dump()),
        name=f"eval-prm-{tag}",
        route_prefix=None,
    )

    @ray.remote(num_cpus=0.05)
    def shard(chunk):
        async def go():
            p, r = await connect(policy, prm)
            return await solve_all(p, r, solver, chunk, None, max(1, concurrency // workers), False)

        return asyncio.run(go())

    size = max(1, min(32, len(work) // (4 * workers) or 1))
    chunks = [work[i : i + size] for i in range(0, len(work), size)]
    records: list[dict] = []
    pending: list = []
    try:
        with tqdm(total=len(work), desc=f"eval on Ray ({workers} tasks in flight)", unit="solve") as bar:
            while chunks or pending:
                while chunks and len(pending) < workers:
                    pending.append(shard.remote(chunks.pop(0)))
                done, pending = ray.wait(pending, num_returns=1)
                for rec_list in ray.get(done):
                    records += rec_list
                    with out.open("a") as fh:
                        for rec in rec_list:
                            fh.write(json.dumps(rec) + "\n")
                    bar.update(len(rec_list))
    finally:
        serve.delete(f"eval-policy-{tag}")
        serve.delete(f"eval-prm-{tag}")
    return records


def summarize(records: list[dict]) -> dict:
    """Accuracy and mean compute per strategy x budget, overall and per level."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        for level in ("all", r["level"]):
            groups[(r["strategy"], r["budget"], level)].append(r)
    rows = []
    for (strategy, budget, level), rs in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0, str(kv[0][2]))
    ):
        rows.append(
            {
                "strategy": strategy,
                "budget": budget,
                "level": level,
                "problems": len(rs),
                "accuracy": round(sum(r["correct"] for r in rs) / len(rs), 4),
                "mean_policy_token_equivalents": round(
                    sum(r["ledger"]["policy_token_equivalents"] for r in rs) / len(rs), 1
                ),
                "mean_generated_tokens": round(
                    sum(r["ledger"]["policy_generated_tokens"] for r in rs) / len(rs), 1
                ),
                "mean_prm_tokens": round(sum(r["ledger"]["prm_tokens"] for r in rs) / len(rs), 1),
                "truncated": sum(r["truncated"] for r in rs),
            }
        )
    return {"rows": rows}


def winners(summary: dict) -> list[dict]:
    """Per level and budget, the most accurate strategy (ties: the cheaper one). A strategy that
    takes no budget (greedy) competes at every budget."""
    rows = summary["rows"]
    budgets = sorted({r["budget"] for r in rows if r["budget"] is not None})
    out = []
    for level in sorted({r["level"] for r in rows}, key=str):
        for budget in budgets:
            pool = [r for r in rows if r["level"] == level and r["budget"] in (budget, None)]
            best = max(pool, key=lambda r: (r["accuracy"], -r["mean_policy_token_equivalents"]))
            out.append(
                {
                    "level": level,
                    "budget": budget,
                    "strategy": best["strategy"],
                    "accuracy": best["accuracy"],
                    "compute": best["mean_policy_token_equivalents"],
                }
            )
    return out


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = ["all"] + sorted({r["level"] for r in summary["rows"] if r["level"] != "all"}, key=str)
    cols = min(3, len(levels))
    rows_n = -(-len(levels) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.5 * cols, 3.6 * rows_n), sharey=True, squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[len(levels) :]:
        ax.set_visible(False)
    strategies = sorted({r["strategy"] for r in summary["rows"]})
    for ax, level in zip(flat, levels):
        for s in strategies:
            pts = sorted(
                (r["mean_policy_token_equivalents"], r["accuracy"])
                for r in summary["rows"]
                if r["strategy"] == s and r["level"] == level
            )
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=s)
        ax.set_xscale("log")
        ax.set_title("all levels" if level == "all" else f"level {level}")
        ax.set_xlabel("mean compute (policy-token equivalents)")
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel("accuracy")
    flat[0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_overrides(items: list[str]) -> dict[str, dict]:
    """``--param beam.m=4 --param mcts.surprisal_bonus=0.5`` -> {"beam": {"m": 4}, ...}."""
    out: dict[str, dict] = defaultdict(dict)
    for item in items:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(f"--param takes strategy.key=value (e.g. beam.m=4), got {item!r}")
        key, value = item.split("=", 1)
        strategy, name = key.split(".", 1)
        try:
            out[strategy][name] = json.loads(value)
        except json.JSONDecodeError:
            out[strategy][name] = value
    return dict(out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nexus-ray eval", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument(
        "--dataset", default="arith-test", help="built-in set name or JSONL path (problem, answer[, level])"
    )
    p.add_argument(
        "--strategy", default="greedy,majority,weighted", help=f"comma list of: {', '.join(registry.names())}"
    )
    p.add_argument("--budget", default="4,16,64", help="comma list of budgets in generations")
    p.add_argument("--per-level", type=int, default=None, help="use only the first N problems of each level")
    p.add_argument("--param", action="append", default=[], help="strategy.key=value override (repeatable)")
    p.add_argument(
        "--token-cap",
        type=float,
        default=None,
        help="hard ceiling in policy-token equivalents per budgeted generation (default: none)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="N Ray tasks in flight over shared model workers (0: run in this process)",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=16,
        help="solves in flight per process; their engine calls are batched together",
    )
    models.add_arguments(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("results"), help="parent folder of the run folder")
    p.add_argument("--run", default=None, help="run name (default: dataset-timestamp)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run: keep its records, do only what is missing",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        strategies = [s.strip() for s in args.strategy.split(",") if s.strip()]
        budgets = [int(b) for b in args.budget.split(",") if b.strip()]
        if any(b < 1 for b in budgets):
            raise ValueError("budgets are positive numbers of generations")
        jobs = plan_jobs(strategies, budgets)
        overrides = parse_overrides(args.param)
        for job in jobs:  # validate every parameter set before any work
            registry.build_params(job.strategy, job.budget, overrides.get(job.strategy))
        examples = select_examples(args.dataset, args.per_level)
        config, fmt = models.resolve_models(args, examples)
    except (ValueError, datasets.DatasetError) as err:  # ConfigError is a ValueError
        print(f"error: {err}")
        return 2
    policy_cfg, prm_cfg = config.policy, config.prm
    run_dir = args.out / (args.run or f"{Path(args.dataset).stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir.mkdir(parents=True, exist_ok=True)
    records_path = run_dir / "records.jsonl"
    done = load_records(records_path)
    if done and not args.resume:
        print(
            f"error: {records_path} already holds {len(done)} records; pass --resume to continue "
            "that run, or choose another --run"
        )
        return 2
    # Records outside this selection (another --per-level, say) stay in the file, out of the summary.
    wanted = {(e.problem, j.strategy, j.budget) for e in examples for j in jobs}
    done = [r for r in done if (r["problem"], r["strategy"], r["budget"]) in wanted]
    finished = {(r["problem"], r["strategy"], r["budget"]) for r in done}
    # Problem by problem, levels taken in turn: a run stopped early is a level-balanced subsample
    # with every strategy, and --resume completes it.
    work = [
        (e, j)
        for e in interleave_levels(examples)
        for j in jobs
        if (e.problem, j.strategy, j.budget) not in finished
    ]
    print(
        f"{len(examples)} problems x {len(jobs)} strategy/budget pairs -> {run_dir}"
        + (f" ({len(done)} done before, {len(work)} to go)" if done else "")
    )
    solver = partial(
        solve_one, fmt=fmt, seed=args.seed, overrides=overrides, token_cap_per_generation=args.token_cap
    )
    if args.workers > 0:
        with ray_session():
            records = run_on_ray(
                args.workers, policy_cfg, prm_cfg, solver, work, records_path, args.concurrency
            )
    else:
        records = run_local(policy_cfg, prm_cfg, solver, work, records_path, args.concurrency)
    records = done + records
    summary = summarize(records) | {
        "dataset": args.dataset,
        "strategies": strategies,
        "budgets": budgets,
        "seed": args.seed,
    }
    summary["winners"] = winners(summary)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot(summary, run_dir / "accuracy_vs_compute.png")
    print_table(summary)
    print(f"wrote {records_path}, {run_dir / 'summary.json'}, {run_dir / 'accuracy_vs_compute.png'}")
    return 0


def print_table(summary: dict) -> None:
    print(f"{'strategy':<12} {'budget':>6} {'level':>5} {'n':>4} {'accuracy':>8} {'compute':>9}")
    for r in summary["rows"]:
        print(
            f"{r['strategy']:<12} {r['budget'] or '-'!s:>6} {r['level']!s:>5} {r['problems']:>4} "
            f"{r['accuracy']:>8.3f} {r['mean_policy_token_equivalents']:>9.0f}"
        )
    print("\nbest strategy per level and budget (ties: cheaper wins)")
    for w in summary["winners"]:
        print(
            f"  level {w['level']!s:>3}  budget {w['budget']:>4}: {w['strategy']:<10} "
            f"accuracy {w['accuracy']:.3f} at {w['compute']:.0f}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
