"""The ``make demo`` job: greedy vs. best-of-8 with the PRM on built-in problems of rising difficulty.

It loads the zoo policy and PRM, solves a few ``arith-test`` problems per level both ways,
and prints a per-problem table and per-level accuracy with the compute each way spent.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from nexus_ray.config import local_models
from nexus_ray.engines import build_policy_engine, build_reward_engine
from nexus_ray.search import registry
from nexus_ray.search.base import SearchContext
from nexus_ray.tasks import datasets
from nexus_ray.tasks.format import ARITH
from nexus_ray.tasks.grading import is_equivalent


@dataclass
class Row:
    level: int
    problem: str
    gold: str
    greedy_answer: str | None
    greedy_tokens: float
    bon_answer: str | None
    bon_tokens: float


async def run_demo(per_level: int, n: int, seed: int, engine: str = "hf") -> list[Row]:
    models = local_models(engine)  # type: ignore[arg-type]
    policy = build_policy_engine(models.policy)
    prm = build_reward_engine(models.prm)
    try:
        return await _solve_all(policy, prm, per_level, n, seed)
    finally:
        policy.shutdown()
        prm.shutdown()


async def _solve_all(policy, prm, per_level: int, n: int, seed: int) -> list[Row]:
    examples = datasets.load("arith-test")
    rows = []
    for level in range(1, 6):
        for ex in [e for e in examples if e.level == level][:per_level]:
            ctx = SearchContext(policy, prm, ARITH.prompt(ex.problem), ARITH, seed=seed)
            g = await registry.run("greedy", ctx)
            b = await registry.run("weighted", ctx, generations=n)
            rows.append(
                Row(
                    level,
                    ex.problem,
                    ex.answer,
                    g.answer,
                    g.ledger.policy_token_equivalents,
                    b.answer,
                    b.ledger.policy_token_equivalents,
                )
            )
    return rows


def _mark(answer: str | None, gold: str) -> str:
    return ("ok " if is_equivalent(answer, gold) else "-- ") + (answer or "(none)")


def print_table(rows: list[Row], n: int, shown_per_level: int = 2) -> None:
    head = f"{'lvl':>3}  {'problem':<26} {'gold':>7}  {'greedy':<12} {f'best-of-{n} + PRM':<18}"
    print(head)
    print("-" * len(head))
    shown: dict[int, int] = {}
    for r in rows:
        shown[r.level] = shown.get(r.level, 0) + 1
        if shown[r.level] > shown_per_level:
            continue
        print(
            f"{r.level:>3}  {r.problem:<26} {r.gold:>7}  {_mark(r.greedy_answer, r.gold):<12} "
            f"{_mark(r.bon_answer, r.gold):<18}"
        )
    print()
    best_acc, best_cost = f"best-of-{n} acc", f"best-of-{n} cost"
    print(f"{'level':>5}  {'greedy acc':>10}  {best_acc:>14}  {'greedy cost':>11}  {best_cost:>15}")
    for level in sorted({r.level for r in rows}):
        sub = [r for r in rows if r.level == level]
        g = sum(is_equivalent(r.greedy_answer, r.gold) for r in sub) / len(sub)
        b = sum(is_equivalent(r.bon_answer, r.gold) for r in sub) / len(sub)
        gc = sum(r.greedy_tokens for r in sub) / len(sub)
        bc = sum(r.bon_tokens for r in sub) / len(sub)
        print(f"{level:>5}  {g:>10.2f}  {b:>14.2f}  {gc:>11.0f}  {bc:>15.0f}")
    print("\ncost = policy-token equivalents per problem (FLOPs / 2 x policy parameters; PRM included)")


def main(per_level: int = 10, n: int = 8, seed: int = 0, engine: str = "hf") -> None:
    start = time.time()
    rows = asyncio.run(run_demo(per_level, n, seed, engine))
    print_table(rows, n)
    print(f"({len(rows)} problems in {time.time() - start:.0f} s)")
