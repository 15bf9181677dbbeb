"""Budget allocation on accuracy-vs-compute curves.

Each difficulty bin has a curve: points (compute, accuracy), one per budget level of the
table. Only the upper concave hull matters: a point under the chord of two others is beaten
by mixing them. On hulls, spending where the marginal accuracy per unit of compute is highest
is optimal (the multiple-choice knapsack's LP relaxation), so ``allocate`` walks hull segments
in order of slope, weighted by how many prompts fall in each bin, until the mean budget is
spent. The last affordable segment is taken fractionally: that bin mixes its two neighbouring
plans with a probability, so the mean compute equals the budget. Bins where compute does not
help keep their cheapest plan.

``split_batch`` does the same for a batch with a total budget, prompt by prompt, without
fractions: each prompt gets one plan, the leftover stays unspent.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Point:
    compute: float
    accuracy: float
    index: int  # which plan on the original curve


def upper_hull(points: list[Point]) -> list[Point]:
    """The concave upper hull from the cheapest point on: compute and accuracy both increase,
    slopes decrease. Points that cost more for no more accuracy drop out."""
    pts = sorted(points, key=lambda p: (p.compute, -p.accuracy))
    hull: list[Point] = []
    for p in pts:
        if hull and p.accuracy <= hull[-1].accuracy:
            continue
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # drop b when it lies on or under the chord a -> p
            if (b.accuracy - a.accuracy) * (p.compute - a.compute) <= (p.accuracy - a.accuracy) * (
                b.compute - a.compute
            ):
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


@dataclass(frozen=True)
class Mix:
    """Run plan ``low`` with probability 1 - p_high, else plan ``high`` (indices on the curve)."""

    low: int
    high: int
    p_high: float

    def pick(self, u: float) -> int:
        """The plan for a uniform draw ``u`` in [0, 1)."""
        return self.high if u < self.p_high else self.low


@dataclass(frozen=True)
class Allocation:
    mixes: list[Mix]
    mean_compute: float
    expected_accuracy: float


def allocate(curves: list[list[Point]], weights: list[float], mean_budget: float) -> Allocation:
    """Per-bin plans maximizing the weighted accuracy with weighted mean compute <= mean_budget.

    ``weights``: the share of prompts in each bin (they sum to 1). When even the cheapest plans
    exceed the budget they are returned anyway (nothing is cheaper) and ``mean_compute`` says so.
    """
    if len(curves) != len(weights):
        raise ValueError("one weight per curve")
    hulls = [upper_hull(c) for c in curves]
    if any(not h for h in hulls):
        raise ValueError("every bin needs at least one plan")
    spent = sum(w * h[0].compute for w, h in zip(weights, hulls))
    acc = sum(w * h[0].accuracy for w, h in zip(weights, hulls))
    mixes = [Mix(h[0].index, h[0].index, 0.0) for h in hulls]
    segments = sorted(
        ((h[i + 1].accuracy - h[i].accuracy) / (h[i + 1].compute - h[i].compute), b, i)
        for b, h in enumerate(hulls)
        for i in range(len(h) - 1)
    )
    for _, b, i in reversed(segments):  # steepest first; within a bin slopes fall, so order holds
        if weights[b] == 0:
            continue
        lo, hi = hulls[b][i], hulls[b][i + 1]
        cost = weights[b] * (hi.compute - lo.compute)
        room = mean_budget - spent
        if room <= 1e-9 * max(1.0, abs(mean_budget)):  # spent, up to rounding
            break
        if cost <= room * (1 + 1e-12):
            spent += cost
            acc += weights[b] * (hi.accuracy - lo.accuracy)
            mixes[b] = Mix(hi.index, hi.index, 0.0)
            continue
        p = room / cost
        spent += p * cost
        acc += p * weights[b] * (hi.accuracy - lo.accuracy)
        mixes[b] = Mix(lo.index, hi.index, p)
        break
    return Allocation(mixes, spent, acc)


def split_batch(curves: list[list[Point]], total_budget: float) -> tuple[list[int], float]:
    """One plan per prompt (indices on its curve) with total compute <= total_budget, greedy by
    marginal expected gain per unit of compute; returns the plans and the compute they use."""
    hulls = [upper_hull(c) for c in curves]
    level = [0] * len(hulls)
    spent = sum(h[0].compute for h in hulls)
    while True:
        best, best_slope = None, 0.0
        for b, h in enumerate(hulls):
            i = level[b]
            if i + 1 < len(h) and spent + h[i + 1].compute - h[i].compute <= total_budget:
                slope = (h[i + 1].accuracy - h[i].accuracy) / (h[i + 1].compute - h[i].compute)
                if slope > best_slope:
                    best, best_slope = b, slope
        if best is None:
            return [h[level[b]].index for b, h in enumerate(hulls)], spent
        spent += hulls[best][level[best] + 1].compute - hulls[best][level[best]].compute
        level[best] += 1
