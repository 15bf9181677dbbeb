"""PRM step aggregation and answer selection across candidates.

Step aggregation turns a solution's per-step scores into one number (``last`` is what Snell
et al. found best). Answer selection picks among candidates: ``majority`` (self-consistency,
no PRM), ``weighted`` (sum of aggregated scores per distinct answer, Snell's best-of-N
weighted) and ``argmax`` (the single best-scored candidate).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Literal

StepAggregation = Literal["last", "min", "prod", "mean"]
Selection = Literal["majority", "weighted", "argmax"]


def aggregate_steps(scores: tuple[float, ...] | list[float], mode: StepAggregation = "last") -> float:
    if not scores:
        return 0.0
    if mode == "last":
        return scores[-1]
    if mode == "min":
        return min(scores)
    if mode == "prod":
        return math.prod(scores)
    if mode == "mean":
        return sum(scores) / len(scores)
    raise ValueError(f"unknown step aggregation {mode!r}: use last, min, prod or mean")


def select(answers: list[str | None], scores: list[float] | None, mode: Selection) -> int:
    """Index of the chosen candidate. Candidates without an answer are never chosen while
    another has one; ties go to the earliest candidate."""
    return ranked(answers, scores, mode)[0]


def ranked(answers: list[str | None], scores: list[float] | None, mode: Selection) -> list[int]:
    """One candidate per distinct answer, best answer first by the selection's own measure (votes,
    summed scores, or the best single score): ``select``'s choice, then the runner-up, and so on."""
    if not answers:
        raise ValueError("no candidates to select from")
    valid = [i for i, a in enumerate(answers) if a is not None] or list(range(len(answers)))
    if mode == "majority" or scores is None:
        if mode != "majority":
            raise ValueError(f"selection {mode!r} needs PRM scores")
        weights = {i: 1.0 for i in valid}
    elif mode in ("weighted", "argmax"):
        weights = {i: scores[i] for i in valid}
    else:
        raise ValueError(f"unknown selection {mode!r}: use majority, weighted or argmax")
    value: dict[str | None, float] = defaultdict(float)
    first: dict[str | None, int] = {}
    for i in valid:
        a = answers[i]
        if mode == "argmax":
            if a not in first or weights[i] > value[a]:
                value[a], first[a] = weights[i], i
        else:
            value[a] += weights[i]
            first.setdefault(a, i)
    return sorted(first.values(), key=lambda i: (-value[answers[i]], i))
