"""Synthetic multi-step arithmetic: a seeded generator with difficulty knobs and an exact checker.

A problem is an integer expression such as ``12+7*3-5``. Its solution rewrites the expression
once per line, each line evaluating exactly one operation in canonical order (the leftmost
``*`` first, then the leftmost ``+``/``-``), and ends with ``A: <answer>``::

    Q: 12+7*3-5
    12+21-5
    33-5
    28
    A: 28

Because every step is a deterministic function of the previous line, the checker can say
exactly which step is the first wrong one; that gives exact step labels for the PRM.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

STEP_DELIMITER = "\n"
ANSWER_PREFIX = "A: "
QUESTION_PREFIX = "Q: "
OPERATORS = "+-*"

_TOKEN_RE = re.compile(r"[0-9]+|[+\-*]")  # ASCII digits only: \d matches every script's


@dataclass(frozen=True)
class Level:
    """Difficulty knobs of one level: how many operations, how many digits, which operators."""

    n_ops: tuple[int, int]
    digits: tuple[int, int]
    operators: str = OPERATORS
    max_mul: int = 2
    mul_digits: int = 2


# Five levels of rising difficulty; the zoo policy's accuracy falls along them.
LEVELS: dict[int, Level] = {
    1: Level(n_ops=(1, 2), digits=(1, 1), operators="+-"),
    2: Level(n_ops=(2, 3), digits=(1, 2), operators="+-*", max_mul=1, mul_digits=1),
    3: Level(n_ops=(3, 4), digits=(1, 2), operators="+-*", max_mul=1, mul_digits=2),
    4: Level(n_ops=(4, 5), digits=(2, 2), operators="+-*", max_mul=2, mul_digits=2),
    5: Level(n_ops=(5, 6), digits=(2, 3), operators="+-*", max_mul=2, mul_digits=2),
}


@dataclass(frozen=True)
class Problem:
    """One generated problem with its gold solution steps and answer."""

    expression: str
    level: int
    steps: tuple[str, ...] = field(default=())

    @property
    def answer(self) -> str:
        return self.steps[-1] if self.steps else self.expression

    @property
    def prompt(self) -> str:
        return format_prompt(self.expression)

    @property
    def solution(self) -> str:
        return format_solution(self.steps)


def format_prompt(expression: str) -> str:
    """The policy's prompt for a problem: ``Q: <expr>`` and the step delimiter."""
    return f"{QUESTION_PREFIX}{expression}{STEP_DELIMITER}"


def format_solution(steps: tuple[str, ...] | list[str]) -> str:
    """Steps one per line, then the answer line (the answer is the last step's value)."""
    body = "".join(s + STEP_DELIMITER for s in steps)
    return f"{body}{ANSWER_PREFIX}{steps[-1]}{STEP_DELIMITER}"


def parse_problem(text: str) -> str:
    """The expression in a user's problem text (``Q: 12 + 7*3`` or ``12+7*3``).

    Raises ValueError, with a message fit for the user, unless it is an expression of
    integers with ``+ - *``.
    """
    expression = text.strip()
    expression = expression.removeprefix(QUESTION_PREFIX.strip())
    expression = expression.replace(" ", "")
    if any(ch.isdigit() and not ch.isascii() for ch in expression):
        raise ValueError(
            f"{text[:80]!r} has non-ASCII digits: write numbers with the digits 0-9 (e.g. 12+7*3-5)"
        )
    try:
        tokenize(expression)
    except ValueError:
        raise ValueError(
            f"{text[:80]!r} is not an arithmetic expression of integers with + - * (e.g. 12+7*3-5)"
        ) from None
    return expression


def tokenize(expression: str) -> list[int | str]:
    """Split an expression into numbers and operators; a leading ``-`` makes a negative number.

    Raises ValueError on anything that is not a well-formed expression.
    """
    expression = expression.strip()
    if not expression:
        raise ValueError("empty expression")
    negative = expression.startswith("-")
    body = expression[1:] if negative else expression
    parts = _TOKEN_RE.findall(body)
    if "".join(parts) != body or not parts:
        raise ValueError(f"malformed expression {expression!r}")
    tokens: list[int | str] = [p if p in OPERATORS else int(p) for p in parts]
    for i, tok in enumerate(tokens):
        if (i % 2 == 0) != isinstance(tok, int):
            raise ValueError(f"malformed expression {expression!r}")
    if len(tokens) % 2 == 0:
        raise ValueError(f"malformed expression {expression!r}")
    if negative:
        tokens[0] = -int(tokens[0])
    return tokens


def render(tokens: list[int | str]) -> str:
    return "".join(str(t) for t in tokens)


def reduce_once(expression: str) -> str:
    """Evaluate the canonical next operation: the leftmost ``*``, else the leftmost ``+``/``-``."""
    tokens = tokenize(expression)
    if len(tokens) == 1:
        raise ValueError(f"{expression!r} is already a number")
    ops = tokens[1::2]
    j = ops.index("*") if "*" in ops else 0
    a, op, b = tokens[2 * j], tokens[2 * j + 1], tokens[2 * j + 2]
    value = a * b if op == "*" else a + b if op == "+" else a - b
    return render(tokens[: 2 * j] + [value] + tokens[2 * j + 3 :])


def solve(expression: str) -> tuple[str, ...]:
    """The gold step sequence: one reduction per step until a single number remains."""
    steps = []
    current = expression
    while len(tokenize(current)) > 1:
        current = reduce_once(current)
        steps.append(current)
    return tuple(steps)


def evaluate(expression: str) -> int:
    return int(solve(expression)[-1]) if len(tokenize(expression)) > 1 else int(expression)


def _random_number(rng: random.Random, digits: tuple[int, int]) -> int:
    d = rng.randint(*digits)
    return rng.randint(10 ** (d - 1) if d > 1 else 0, 10**d - 1)


def generate(level: int, rng: random.Random) -> Problem:
    """One problem of the given level, drawn from ``rng``."""
    knobs = LEVELS[level]
    n_ops = rng.randint(*knobs.n_ops)
    ops = [rng.choice(knobs.operators) for _ in range(n_ops)]
    # Cap multiplications (they dominate difficulty) and never chain two (numbers explode).
    n_mul = 0
    for i, op in enumerate(ops):
        if op == "*" and (n_mul >= knobs.max_mul or (i > 0 and ops[i - 1] == "*")):
            ops[i] = rng.choice("+-")
        n_mul += ops[i] == "*"
    numbers = []
    for i in range(n_ops + 1):
        beside_mul = (i > 0 and ops[i - 1] == "*") or (i < n_ops and ops[i] == "*")
        digits = (1, knobs.mul_digits) if beside_mul else knobs.digits
        numbers.append(_random_number(rng, digits))
    tokens: list[int | str] = [numbers[0]]
    for op, n in zip(ops, numbers[1:]):
        tokens += [op, n]
    expression = render(tokens)
    return Problem(expression=expression, level=level, steps=solve(expression))


def generate_set(n: int, seed: int, levels: tuple[int, ...] = tuple(LEVELS)) -> list[Problem]:
    """``n`` problems spread evenly over ``levels``, reproducible from ``seed``."""
    rng = random.Random(seed)
    return [generate(levels[i % len(levels)], rng) for i in range(n)]


@dataclass(frozen=True)
class CheckResult:
    """Verdict on a candidate solution.

    ``first_wrong_step`` is the 0-based index of the first step line that is not the canonical
    reduction of the line before it (``None`` if every step is right); ``step_correct[i]`` says
    whether the solution is still correct after step i; ``answer`` is what the ``A:`` line says.
    """

    correct: bool
    answer: str | None
    first_wrong_step: int | None
    step_correct: tuple[bool, ...]


def split_solution(text: str) -> tuple[list[str], str | None]:
    """Split generated text into step lines and the answer (None when no ``A:`` line)."""
    steps: list[str] = []
    for line in text.split(STEP_DELIMITER):
        if line.startswith(ANSWER_PREFIX):
            return steps, line[len(ANSWER_PREFIX) :].strip()
        if line.strip():
            steps.append(line.strip())
    return steps, None


def check(expression: str, solution: str) -> CheckResult:
    """Check every step of ``solution`` against the canonical reduction of the previous line."""
    steps, answer = split_solution(solution)
    step_correct: list[bool] = []
    first_wrong = None
    previous = expression
    for i, step in enumerate(steps):
        ok = first_wrong is None and _is_reduction(previous, step)
        if not ok and first_wrong is None:
            first_wrong = i
        step_correct.append(ok)
        previous = step
    gold = str(evaluate(expression))
    finished = first_wrong is None and bool(steps) and steps[-1] == gold
    correct = finished and answer == gold
    return CheckResult(correct, answer, first_wrong, tuple(step_correct))


def _is_reduction(previous: str, step: str) -> bool:
    try:
        return reduce_once(previous) == step
    except ValueError:
        return False


def corrupt_step(problem: Problem, index: int, rng: random.Random) -> list[str]:
    """The gold steps with step ``index`` made wrong (one number nudged), for tests and PRM data."""
    steps = list(problem.steps)
    tokens = tokenize(steps[index])
    positions = list(range(0, len(tokens), 2))
    k = rng.choice(positions)
    tokens[k] = int(tokens[k]) + rng.choice([-10, -2, -1, 1, 2, 10])
    steps[index] = render(tokens)
    return steps
