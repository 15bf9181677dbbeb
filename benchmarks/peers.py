"""nexus_ray side by side with its_hub 1.2.0 (Red Hat's inference-time scaling library) on the
same models, problems and compute ledger.

    python benchmarks/peers.py                                   # all 500 arith-test problems
    python benchmarks/peers.py --per-level 2 --budgets 4         # a smoke run (10 problems)
    python benchmarks/peers.py --resume                          # finish an interrupted run

What runs, at each budget N (generations, Snell et al.'s unit):

  its_hub (its algorithms through nexus_ray.peers.itshub's adapters over nexus_ray's engines)
    self_consistency     N full samples, majority over the parsed answers
    best_of_n            N full samples, the one our PRM scores highest (its outcome reward model)
    beam_search          N paths, the best N/4 kept after every step (width = N // 4)
    particle_filtering   particle_gibbs with one iteration: N particles resampled after each step
  nexus_ray (registry strategies on a SearchContext, and the planner)
    majority, weighted   N full samples: majority vote, PRM-weighted vote
    beam                 N beams, width 4 (N/4 kept, 4 next steps each), weighted vote at the end
    particles            N particles, multinomial resampling by logit(PRM), weighted vote
    planner              the built-in table (--table) online; its mean budget at N is the mean
                         compute weighted@N has spent so far in this run (weighted runs first
                         in every block), so the planner is paced to weighted's measured cost

Both libraries sample at nexus_ray's defaults (full samples: temperature 1, 256 tokens;
stepwise: temperature 0.8, 64 tokens a step, 40 steps) and are charged to a ComputeLedger by
the same rules: prefill (past what the prefix cache holds), every generated token, every token
the PRM reads. No ceiling on either. Per budget and method: accuracy, mean ledger compute
(policy-token equivalents), and wall-clock solves per second with --in-flight problems at a
time (its_hub through its own async orchestration, nexus_ray through its batched engines).
Problems go in blocks (--block); within a block every budget and method runs in turn, the
libraries alternating which goes first, so the machine's load falls on both alike.

Writes --out/records.jsonl (one line per problem x method x budget, appended as each
finishes), --out/timings.jsonl (one line per method x budget x block: problems and seconds),
--out/peers.json (the summary; peers-per-level-K.json for a --per-level run) and prints a
Markdown table. --resume keeps what a previous run wrote and does the rest; without it a run
refuses an --out that already holds records. --controls adds nexus_ray's PRM strategies with
its_hub's selection rule (the single best-scored candidate), to tell the two apart.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from its_hub import BestOfN, SelfConsistency
from its_hub.core.algorithms.beam_search import BeamSearch
from its_hub.core.algorithms.particle_gibbs import ParticleGibbs
from its_hub.core.lms.step_generation import StepGeneration

from nexus_ray.engines import build_policy_engine, build_reward_engine
from nexus_ray.engines.base import PolicyEngine, RewardEngine
from nexus_ray.jobs import models
from nexus_ray.jobs.eval import interleave_levels, load_records, select_examples
from nexus_ray.peers.itshub import ItsHubOutcomeRM, ItsHubPolicy, ItsHubPRM
from nexus_ray.planner.execute import solve
from nexus_ray.planner.sampling import EngineSampler
from nexus_ray.planner.table import PlanTable, load_table
from nexus_ray.search import registry
from nexus_ray.search.base import SearchContext
from nexus_ray.search.beam import BeamParams
from nexus_ray.search.best_of_n import BestOfNParams
from nexus_ray.search.ledger import ComputeLedger
from nexus_ray.search.particles import ParticlesParams
from nexus_ray.tasks import arith
from nexus_ray.tasks.datasets import Example
from nexus_ray.tasks.format import TaskFormat
from nexus_ray.tasks.grading import is_equivalent

# (its_hub's algorithm, nexus_ray's counterpart); the planner has none.
PAIRS = [
    ("self_consistency", "majority"),
    ("best_of_n", "weighted"),
    ("beam_search", "beam"),
    ("particle_filtering", "particles"),
    (None, "planner"),
]
ITS_HUB = [a for a, _ in PAIRS if a]
NEXUS_RAY = [b for _, b in PAIRS]
# --controls: nexus_ray's strategies picking the single best-scored candidate, as its_hub's
# best-of-N, beam search and particle filtering do, instead of a PRM-weighted vote.
CONTROLS = [
    ("best_of_n", "weighted/argmax"),
    ("beam_search", "beam/argmax"),
    ("particle_filtering", "particles/argmax"),
]


@dataclass
class Setup:
    policy: PolicyEngine
    prm: RewardEngine
    fmt: TaskFormat
    table: PlanTable
    seed: int
    planner_budgets: dict[int, float] = field(default_factory=dict)  # N -> weighted@N's mean compute


Answer = tuple[str | None, ComputeLedger]


def step_generation() -> StepGeneration:
    """its_hub's step-by-step sampler at nexus_ray's tree-search defaults: a step per line, the
    answer line ends a path (its max_steps + 1 steps at most, nexus_ray's max_rounds)."""
    beam = BeamParams()
    return StepGeneration(
        max_steps=beam.max_rounds - 1,
        step_token=arith.STEP_DELIMITER,
        stop_token=arith.ANSWER_PREFIX,
        temperature=beam.temperature,
    )


async def run_its_hub(setup: Setup, method: str, problem: str, budget: int) -> Answer:
    """One its_hub algorithm on one problem, through adapters charging a fresh ledger."""
    ctx = SearchContext.for_problem(setup.policy, setup.prm, setup.fmt, problem)
    ledger = ctx.new_ledger()
    stepwise = method in ("beam_search", "particle_filtering")
    full, beam = BestOfNParams(), BeamParams.for_budget(budget)
    lm = ItsHubPolicy(
        setup.policy,
        setup.fmt,
        ledger,
        max_tokens=beam.max_step_tokens if stepwise else full.max_tokens,
        temperature=beam.temperature if stepwise else full.temperature,
        seed=setup.seed,
    )
    prm = ItsHubPRM(setup.prm, setup.fmt, ledger)
    if method == "self_consistency":
        algorithm, n = SelfConsistency(setup.fmt.answer), budget
    elif method == "best_of_n":
        algorithm, n = BestOfN(ItsHubOutcomeRM(prm)), budget
    elif method == "beam_search":
        algorithm, n = BeamSearch(step_generation(), prm, beam_width=beam.n // beam.m), beam.n
    else:
        algorithm, n = (
            ParticleGibbs(step_generation(), prm, num_iterations=1),
            ParticlesParams.for_budget(budget).n,
        )
    reply = await algorithm.ainfer(lm, problem, n)
    ledger.generations += n  # as nexus_ray's strategies count: the paths or samples asked for
    return setup.fmt.answer(reply["content"]), ledger


async def run_nexus_ray(setup: Setup, method: str, problem: str, budget: int) -> Answer:
    """A registry strategy, or the planner at weighted@``budget``'s measured mean compute."""
    ctx = SearchContext.for_problem(setup.policy, setup.prm, setup.fmt, problem, None, setup.seed)
    if method != "planner":
        strategy, _, selection = method.partition("/")
        result = await registry.run(strategy, ctx, budget, {"selection": selection} if selection else None)
        return result.answer, result.ledger
    ledger = ctx.new_ledger()
    allocation = setup.table.allocate(setup.planner_budgets[budget])
    planned = await solve(EngineSampler(ctx), problem, setup.table, allocation, ledger)
    return planned.outcome.answer, ledger


def weighted_compute(records: list[dict], budget: int) -> float:
    """Mean ledger compute of the weighted@``budget`` records: the planner's budget."""
    spent = [
        r["ledger"]["policy_token_equivalents"]
        for r in records
        if r["method"] == "weighted" and r["budget"] == budget
    ]
    if not spent:
        raise RuntimeError(f"no weighted@{budget} records yet to pace the planner by")
    return float(np.mean(spent))


async def solve_one(setup: Setup, method: str, example: Example, budget: int) -> dict:
    library = "its_hub" if method in ITS_HUB else "nexus_ray"
    run = run_its_hub if library == "its_hub" else run_nexus_ray
    start = time.perf_counter()
    answer, ledger = await run(setup, method, example.problem, budget)
    paced = {"mean_budget": round(setup.planner_budgets[budget], 1)} if method == "planner" else {}
    return {
        "problem": example.problem,
        "gold": example.answer,
        "level": example.level,
        "library": library,
        "method": method,
        "budget": budget,
        "answer": answer,
        "correct": is_equivalent(answer, example.answer, setup.fmt.answer_kind),
        "ledger": ledger.to_dict(),
        "seconds": round(time.perf_counter() - start, 3),
        **paced,
    }


async def wave(
    solver: Callable[[Example], Awaitable[dict]], examples: list[Example], in_flight: int, out: Path
) -> float:
    """``solver`` on every example, ``in_flight`` at a time; records appended as they finish.
    Returns the wall-clock seconds of the whole wave."""
    sem = asyncio.Semaphore(in_flight)

    async def one(e: Example) -> None:
        async with sem:
            record = await solver(e)
        with out.open("a") as fh:
            fh.write(json.dumps(record) + "\n")

    start = time.perf_counter()
    await asyncio.gather(*(one(e) for e in examples))
    return time.perf_counter() - start


def block_order(block_index: int, controls: bool = False) -> list[str]:
    """Every method once, the pairs side by side, the library that goes first alternating;
    the controls last."""
    order = []
    for its, ours in PAIRS:
        pair = [m for m in (its, ours) if m]
        order += pair if block_index % 2 == 0 else pair[::-1]
    return order + ([ours for _, ours in CONTROLS] if controls else [])


async def run_all(setup: Setup, args: argparse.Namespace, examples: list[Example], done: set) -> None:
    # its_hub's orchestrator (its default, 32 calls at a time per problem) parks one thread of
    # the loop's default executor per call waiting for its semaphore, and nexus_ray's engines
    # run their batches on that executor too: with the default's min(32, CPUs + 4) threads the
    # parked waits take them all at budget 64 and nothing runs again. Room for every wait:
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=args.in_flight * max(args.budgets) + 8)
    )
    records, timings = args.out / "records.jsonl", args.out / "timings.jsonl"
    for k in range(0, len(examples), args.block):
        block = examples[k : k + args.block]
        for budget in args.budgets:
            for method in block_order(k // args.block, args.controls):
                todo = [e for e in block if (e.problem, method, budget) not in done]
                if not todo:
                    continue
                if method == "planner":
                    setup.planner_budgets[budget] = weighted_compute(load_records(records), budget)
                seconds = await wave(
                    lambda e, m=method, b=budget: solve_one(setup, m, e, b), todo, args.in_flight, records
                )
                with timings.open("a") as fh:
                    fh.write(
                        json.dumps(
                            {"method": method, "budget": budget, "problems": len(todo), "seconds": seconds}
                        )
                        + "\n"
                    )
                print(
                    f"  block {k // args.block}, budget {budget}: {method} on {len(todo)} in {seconds:.1f}s"
                )


def summarize(records: list[dict], timings: list[dict], budgets: list[int], controls: bool = False) -> dict:
    """Per budget and method: accuracy, mean compute, solves per second (timed waves only)."""
    out: dict = {}
    for budget in budgets:
        row = {}
        for method in [*ITS_HUB, *NEXUS_RAY, *(ours for _, ours in CONTROLS if controls)]:
            rs = [r for r in records if r["method"] == method and r["budget"] == budget]
            ts = [t for t in timings if t["method"] == method and t["budget"] == budget]
            if not rs:
                continue
            seconds = sum(t["seconds"] for t in ts)
            row[method] = {
                "library": rs[0]["library"],
                "problems": len(rs),
                "accuracy": float(np.mean([r["correct"] for r in rs])),
                "compute": float(np.mean([r["ledger"]["policy_token_equivalents"] for r in rs])),
                "solves_per_s": sum(t["problems"] for t in ts) / seconds if seconds else None,
            }
        for its, ours in [*PAIRS, *CONTROLS]:
            if its in row and ours in row:
                row[ours]["vs_its_hub"] = paired_gap(records, its, ours, budget)
        out[str(budget)] = row
    return out


def of_examples(records: list[dict], examples: list[Example]) -> list[dict]:
    """The records of these examples: a problem the set holds k times (arith-test repeats six
    easy ones) keeps its first k records per method and budget, each tagged with its copy."""
    wanted = Counter(e.problem for e in examples)
    seen: Counter = Counter()
    out = []
    for r in records:
        key = (r["problem"], r["method"], r["budget"])
        if seen[key] < wanted[r["problem"]]:
            out.append({**r, "copy": seen[key]})
            seen[key] += 1
    return out


def paired_gap(records: list[dict], its: str, ours: str, budget: int) -> list[float] | None:
    """nexus_ray's accuracy minus its_hub's on the problems both solved at ``budget``, with a
    90% interval from a paired bootstrap over problems (2,000 resamples, seeded)."""
    right = {(r["method"], r["problem"], r["copy"]): r["correct"] for r in records if r["budget"] == budget}
    both = [(p, c) for (m, p, c) in right if m == its and (ours, p, c) in right]
    if not both:
        return None
    diff = np.array([float(right[ours, p, c]) - float(right[its, p, c]) for p, c in both])
    means = np.random.default_rng(0).choice(diff, (2000, diff.size)).mean(axis=1)
    return [float(diff.mean()), float(np.quantile(means, 0.05)), float(np.quantile(means, 0.95))]


def _cell(row: dict, method: str | None, key: str, fmt: str) -> str:
    value = row.get(method, {}).get(key) if method else None
    return "-" if value is None else format(value, fmt)


def markdown(summary: dict) -> str:
    header = "| N | its_hub | nexus_ray | accuracy (its_hub / nexus_ray) | nexus_ray - its_hub (90% CI) |"
    lines = [
        header + " compute | solves/s | speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for budget, row in summary.items():
        for its, ours in [*PAIRS, *CONTROLS]:
            if ours not in row:
                continue
            a, b = _cell(row, its, "solves_per_s", ".2f"), _cell(row, ours, "solves_per_s", ".2f")
            speedup = "-" if "-" in (a, b) else f"{float(b) / float(a):.1f}x"
            gap = row[ours].get("vs_its_hub")
            gap_cell = "-" if gap is None else f"{gap[0]:+.3f} [{gap[1]:+.3f}, {gap[2]:+.3f}]"
            lines.append(
                f"| {budget} | {its or '-'} | {ours} "
                f"| {_cell(row, its, 'accuracy', '.3f')} / {_cell(row, ours, 'accuracy', '.3f')} "
                f"| {gap_cell} "
                f"| {_cell(row, its, 'compute', '.0f')} / {_cell(row, ours, 'compute', '.0f')} "
                f"| {a} / {b} | {speedup} |"
            )
    return "\n".join(lines)


def budget_list(text: str) -> list[int]:
    """``4,16,64`` -> [4, 16, 64]; anything else is an argparse error that says what to give."""
    try:
        budgets = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give generations as integers, e.g. 4,16,64") from None
    if min(budgets) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every budget must be at least 1")
    return budgets


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="arith-test", help="problems (never the tables' calibration set)")
    p.add_argument(
        "--per-level", type=int, default=None, help="at most this many problems per level (default: all)"
    )
    p.add_argument(
        "--budgets",
        type=budget_list,
        default=[4, 16, 64],
        help="generations, e.g. 4,16,64",
    )
    p.add_argument("--in-flight", type=int, default=16, help="problems solved at a time (default 16)")
    p.add_argument(
        "--block", type=int, default=64, help="problems per block of interleaved waves (default 64)"
    )
    p.add_argument("--table", default="arith-zoo", help="the planner's built-in table name or table JSON")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/peers"))
    p.add_argument(
        "--resume", action="store_true", help="keep the records a previous run wrote and do the rest"
    )
    p.add_argument(
        "--controls",
        action="store_true",
        help="also run weighted, beam and particles picking the best-scored candidate (argmax), "
        "as its_hub's PRM methods do: tells a difference of selection rule from one of search",
    )
    models.add_arguments(p)
    args = p.parse_args(argv)

    try:  # a bad dataset, model or table is the user's to fix: one line, no traceback
        examples = interleave_levels(select_examples(args.dataset, args.per_level))
        config, fmt = models.resolve_models(args, examples)
        table = load_table(args.table)
        table.check_models(config.policy.model, config.prm.model)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    if fmt.name != "arith":
        raise SystemExit("error: its_hub's steps are split at the arith format's lines; use an arith policy")
    args.out.mkdir(parents=True, exist_ok=True)
    done = {(r["problem"], r["method"], r["budget"]) for r in load_records(args.out / "records.jsonl")}
    if done and not args.resume:
        raise SystemExit(
            f"error: {args.out} already holds {len(done)} records; pass --resume or another --out"
        )

    random.seed(args.seed)  # its_hub draws ties and resampling from the global generators
    np.random.seed(args.seed)
    print(
        f"{len(examples)} {args.dataset} problems, budgets {args.budgets}, "
        f"{args.in_flight} in flight -> {args.out}"
    )
    policy, prm = build_policy_engine(config.policy), build_reward_engine(config.prm)
    try:
        asyncio.run(run_all(Setup(policy, prm, fmt, table, args.seed), args, examples, done))
    finally:
        policy.shutdown()
        prm.shutdown()

    records = of_examples(load_records(args.out / "records.jsonl"), examples)
    timings = load_records(args.out / "timings.jsonl")
    summary = summarize(records, timings, args.budgets, args.controls)
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "its_hub": version("its_hub"),
        "dataset": args.dataset,
        "problems": len(examples),
        "in_flight": args.in_flight,
        "planner_budgets": {str(n): round(weighted_compute(records, n), 1) for n in args.budgets},
        "command": " ".join(["python", "benchmarks/peers.py", *(argv if argv is not None else sys.argv[1:])]),
        "budgets": summary,
    }
    name = "peers.json" if args.per_level is None else f"peers-per-level-{args.per_level}.json"
    (args.out / name).write_text(json.dumps(report, indent=1) + "\n")
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
