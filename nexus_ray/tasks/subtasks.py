"""The merge experts' sub-tasks: two slices of the arithmetic task and their held-out sets.

Two disjoint slices of the arithmetic task, each harder than the base policy's training
levels on its own axis, so fine-tuning on one helps it and merging has something to combine:

- ``addsub``: long chains of additions and subtractions (6-8 operations, 1-2 digit numbers);
- ``mul``: multiplication-heavy problems (2 non-adjacent products, each 2-digit x 1-digit).

The experts are trained on a seeded stream of each (``nexus_ray.training.experts``) and merges
are scored on the fixed held-out sets (``nexus_ray.tuning.subtask_score``).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from nexus_ray.tasks import arith


@dataclass(frozen=True)
class SubTask:
    name: str
    n_ops: tuple[int, int]
    digits: tuple[int, int]
    operators: str
    n_mul: int  # exact number of multiplications (never two adjacent)


SUBTASKS: dict[str, SubTask] = {
    "addsub": SubTask("addsub", n_ops=(6, 8), digits=(1, 2), operators="+-", n_mul=0),
    "mul": SubTask("mul", n_ops=(3, 4), digits=(1, 2), operators="+-", n_mul=2),
}
EVAL_SEED = 7_000  # the held-out sets; training streams exclude their expressions


def generate(task: SubTask, rng: random.Random) -> arith.Problem:
    """One problem of ``task``: ``n_mul`` products (2-digit x 1-digit) among +/- operations."""
    n_ops = rng.randint(*task.n_ops)
    ops = [rng.choice(task.operators) for _ in range(n_ops)]
    while True:  # positions of the products, no two adjacent (the numbers would explode)
        muls = sorted(rng.sample(range(n_ops), task.n_mul))
        if all(b - a > 1 for a, b in itertools.pairwise(muls)):
            break
    for i in muls:
        ops[i] = "*"
    numbers = []
    for i in range(n_ops + 1):
        if i < n_ops and ops[i] == "*":
            numbers.append(rng.randint(10, 99))
        elif i > 0 and ops[i - 1] == "*":
            numbers.append(rng.randint(2, 9))
        else:
            d = rng.randint(*task.digits)
            numbers.append(rng.randint(10 ** (d - 1) if d > 1 else 0, 10**d - 1))
    tokens: list[int | str] = [numbers[0]]
    for op, n in zip(ops, numbers[1:]):
        tokens += [op, n]
    expression = arith.render(tokens)
    return arith.Problem(expression=expression, level=0, steps=arith.solve(expression))


def eval_set(name: str, n: int = 100) -> list[arith.Problem]:
    """The fixed held-out problems of one sub-task (the first ``n`` of a seeded stream)."""
    rng = random.Random(f"{EVAL_SEED}-{name}")
    return [generate(SUBTASKS[name], rng) for _ in range(n)]
