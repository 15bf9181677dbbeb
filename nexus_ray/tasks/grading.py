"""Answer extraction and equivalence.

Arithmetic answers are integers and compare exactly. Free-form math answers (MATH-500 style:
LaTeX, fractions) are the content of the solution's last ``\\boxed{}`` (none: no answer, as in
Qwen2.5-Math's evaluation) and compare through the ``math-verify`` package, never hand-written
parsing.
"""

from __future__ import annotations

import re
import threading
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
    return last_boxed(solution)


def last_boxed(text: str) -> str | None:
    """The brace-matched content of the last ``\\boxed{...}`` (``\\fbox`` too), or None."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    if not starts:
        return None
    depth, start = 1, starts[-1]
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i].strip() or None
    return None  # unclosed: the sample was cut off inside its answer


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

    # math-verify's timeouts use signal.alarm, which only the main thread may set (Ray actors,
    # Serve replicas and engine threads are not it); there it runs without one.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    gold_parsed = parse(_wrap(gold), parsing_timeout=timeout)
    predicted_parsed = parse(_wrap(predicted), parsing_timeout=timeout)
    return bool(verify(gold_parsed, predicted_parsed, timeout_seconds=timeout))


def _wrap(answer: str) -> str:
    """math-verify finds answers in LaTeX delimiters; bare answers get wrapped."""
    return answer if ("$" in answer or _BOXED.search(answer)) else f"${answer}$"


def answer_kind(dataset_answers: list[str]) -> AnswerKind:
    """``arith`` when every gold answer is an integer, otherwise ``math``."""
    return "arith" if all(_as_int(a) is not None for a in dataset_answers) else "math"


def grade(solution: str, gold: str, kind: AnswerKind = "arith") -> bool:
    """Whether ``solution``'s final answer equals ``gold``."""
    return is_equivalent(extract_answer(solution, kind), gold, kind)
