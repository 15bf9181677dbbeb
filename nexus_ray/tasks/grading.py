"""Answer extraction and equivalence.

Arithmetic answers are integers and compare exactly. Free-form math answers (MATH-500 style:
LaTeX, fractions, ``\\boxed{}``) go through the ``math-verify`` package, never hand-written
parsing.
"""

from __future__ import annotations

import re
from typing import Literal

from nexus_ray.tasks.arith import ANSWER_PREFIX, STEP_DELIMITER

AnswerKind = Literal["arith", "math"]

_BOXED = re.compile(r"\\boxed\{")


def extract_answer(solution: str, kind: AnswerKind = "arith") -> str | None:
    """The final answer a solution states, or None if it states none."""
    if kind == "arith":
        for line in solution.split(STEP_DELIMITER):
            if line.startswith(ANSWER_PREFIX):
                return line[len(ANSWER_PREFIX) :].strip()
        return None
    from math_verify import parse

    parsed = parse(solution)
    return str(parsed[-1]) if parsed else None


def _as_int(text: str) -> int | None:
    try:
        return int(text.strip())
    except ValueError:
        return None


def is_equivalent(predicted: str | None, gold: str, kind: AnswerKind = "arith") -> bool:
    if predicted is None:
        return False
    if kind == "arith":
        p, g = _as_int(predicted), _as_int(gold)
        return p is not None and p == g
    from math_verify import parse, verify

    return bool(verify(parse(_wrap(gold)), parse(_wrap(predicted))))


def _wrap(answer: str) -> str:
    """math-verify finds answers in LaTeX delimiters; bare answers get wrapped."""
    return answer if ("$" in answer or _BOXED.search(answer)) else f"${answer}$"


def answer_kind(dataset_answers: list[str]) -> AnswerKind:
    """``arith`` when every gold answer is an integer, otherwise ``math``."""
    return "arith" if all(_as_int(a) is not None for a in dataset_answers) else "math"


def grade(solution: str, gold: str, kind: AnswerKind = "arith") -> bool:
    """Whether ``solution``'s final answer equals ``gold``."""
    return is_equivalent(extract_answer(solution, kind), gold, kind)
