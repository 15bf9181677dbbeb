"""Free-form math in Qwen2.5-Math's solution format: the task of the real-format zoo pair.

Two kinds of problem share one solution layout: steps separated by a blank line, the last one
stating the answer in ``\\boxed{}``::

    What is 3/4 of 12 minus 5?          Compute 12+7*3-5.

    12 * 3/4 = 9                        12+21-5

    9 - 5 = 4                           33-5

    The answer is \\boxed{4}.            28

                                        The answer is \\boxed{28}.

Word problems run over exact fractions (answers such as ``-\\frac{7}{2}`` need math-verify);
arithmetic problems reduce one operation per step as in ``arith``. Every step is a
deterministic function of the problem, so a solution's steps can be labelled exactly: a step
is right while the solution still agrees with the gold one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from fractions import Fraction

from nexus_ray.tasks import arith

STEP_DELIMITER = "\n\n"
SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
KINDS = ("arith", "word")


@dataclass(frozen=True)
class WordLevel:
    """Difficulty knobs of a word problem: operations, operand size, which operations."""

    n_ops: tuple[int, int]
    max_operand: int
    operations: tuple[str, ...]


WORD_LEVELS: dict[int, WordLevel] = {
    1: WordLevel((1, 1), 20, ("add", "sub", "mul")),
    2: WordLevel((2, 2), 20, ("add", "sub", "mul", "of")),
    3: WordLevel((2, 3), 20, ("add", "sub", "mul", "div", "of")),
    4: WordLevel((3, 4), 30, ("add", "sub", "mul", "div", "of")),
    5: WordLevel((4, 5), 40, ("add", "sub", "mul", "div", "of")),
}

_SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
_ASK_WORD = {"add": "plus", "sub": "minus", "mul": "times", "div": "divided by"}
_TELL_WORD = {"add": "add {k}", "sub": "subtract {k}", "mul": "multiply by {k}", "div": "divide by {k}"}


@dataclass(frozen=True)
class ChatProblem:
    """One problem: the user's text, its level and kind, the gold steps and the LaTeX answer."""

    problem: str
    level: int
    kind: str
    steps: tuple[str, ...]
    answer: str

    @property
    def solution(self) -> str:
        return STEP_DELIMITER.join(self.steps)


def plain(value: Fraction) -> str:
    """A value as a step writes it: ``4``, ``-7/2``."""
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def latex(value: Fraction) -> str:
    """A value as the boxed answer writes it: ``4``, ``-\\frac{7}{2}``."""
    if value.denominator == 1:
        return str(value.numerator)
    sign = "-" if value < 0 else ""
    return f"{sign}\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}"


def final_step(answer: str) -> str:
    return f"The answer is \\boxed{{{answer}}}."


def _operation(kind: str, rng: random.Random, top: int) -> tuple[str, Fraction]:
    if kind == "of":
        q = rng.randint(2, 6)
        return kind, Fraction(rng.randint(1, q - 1), q)
    low = 2 if kind in ("mul", "div") else 1
    high = 9 if kind in ("mul", "div") else top
    return kind, Fraction(rng.randint(low, high))


def _apply(kind: str, value: Fraction, k: Fraction) -> Fraction:
    if kind == "add":
        return value + k
    if kind == "sub":
        return value - k
    if kind == "div":
        return value / k
    return value * k  # mul, of


def _step(kind: str, value: Fraction, k: Fraction, result: Fraction) -> str:
    symbol = "*" if kind == "of" else _SYMBOL[kind]
    return f"{plain(value)} {symbol} {plain(k)} = {plain(result)}"


def _word_text(start: Fraction, ops: list[tuple[str, Fraction]]) -> str:
    """Short questions read naturally left to right; longer ones are told as a sequence."""
    first, *rest = ops
    if len(ops) <= 2 and all(kind in ("add", "sub") for kind, _ in rest):
        head = (
            f"{plain(first[1])} of {plain(start)}"
            if first[0] == "of"
            else f"{plain(start)} {_ASK_WORD[first[0]]} {plain(first[1])}"
        )
        tail = "".join(f" {_ASK_WORD[kind]} {plain(k)}" for kind, k in rest)
        return f"What is {head}{tail}?"
    clauses = [
        f"take {plain(k)} of it" if kind == "of" else _TELL_WORD[kind].format(k=plain(k)) for kind, k in ops
    ]
    said = ", ".join(clauses[:-1]) + f", then {clauses[-1]}"
    return f"Start with {plain(start)}. {said[0].upper()}{said[1:]}. What is the result?"


def generate_word(level: int, rng: random.Random) -> ChatProblem:
    """A word problem over exact fractions; redrawn until its numbers stay small."""
    knobs = WORD_LEVELS[level]
    while True:
        value = start = Fraction(rng.randint(1, knobs.max_operand))
        ops, steps = [], []
        for _ in range(rng.randint(*knobs.n_ops)):
            kind, k = _operation(rng.choice(knobs.operations), rng, knobs.max_operand)
            result = _apply(kind, value, k)
            ops.append((kind, k))
            steps.append(_step(kind, value, k, result))
            value = result
        if value.denominator <= 36 and abs(value.numerator) <= 2000:
            break
    answer = latex(value)
    return ChatProblem(_word_text(start, ops), level, "word", (*steps, final_step(answer)), answer)


def generate_arith(level: int, rng: random.Random) -> ChatProblem:
    """An ``arith`` expression asked in words, reduced one operation per step."""
    p = arith.generate(level, rng)
    return ChatProblem(f"Compute {p.expression}.", level, "arith", (*p.steps, final_step(p.answer)), p.answer)


def generate(level: int, rng: random.Random) -> ChatProblem:
    """One problem of either kind, half and half."""
    return generate_word(level, rng) if rng.random() < 0.5 else generate_arith(level, rng)


def generate_set(n: int, seed: int, levels: tuple[int, ...] = tuple(WORD_LEVELS)) -> list[ChatProblem]:
    """``n`` distinct problems spread evenly over ``levels``, reproducible from ``seed``."""
    rng = random.Random(seed)
    problems: list[ChatProblem] = []
    seen: set[str] = set()
    while len(problems) < n:
        p = generate(levels[len(problems) % len(levels)], rng)
        if p.problem not in seen:
            seen.add(p.problem)
            problems.append(p)
    return problems


def split_steps(solution: str) -> list[str]:
    """A solution's steps: blank-line separated pieces, stripped, empty ones dropped."""
    return [s.strip() for s in solution.split(STEP_DELIMITER) if s.strip()]


def step_labels(problem: ChatProblem, solution: str) -> list[bool]:
    """Per step of ``solution``: is it still the gold solution after this step?

    The gold solution is the only one the format allows (one canonical operation per step), so
    agreement with it is exactly step correctness. A correct solution's steps are all True.
    """
    labels, ok = [], True
    for i, step in enumerate(split_steps(solution)):
        ok = ok and i < len(problem.steps) and step == problem.steps[i]
        labels.append(ok)
    return labels
