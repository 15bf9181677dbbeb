"""Building a plan table from recorded calibration pools.

1. Every plan of the menu (``stop``; ``majority@n`` and ``weighted@n`` at each sampling
   temperature; any registered strategy at n generations, e.g. ``beam@16``, recorded for real
   in the pools) is run on every problem's pool, probe included, early exit as the service will
   do it: correctness and compute per (problem, plan).
2. Problems are binned by the estimator's difficulty at calibration quantiles.
3. Per (bin, budget in generations), the best plan among those with n <= budget is chosen,
   ties to the cheaper; its accuracy is also estimated by two-fold cross-validation inside the
   bin (chosen on one half, scored on the other, and back), which is what allocation uses, so
   the table does not promise the luck of its own selection.
"""

from __future__ import annotations

import bisect
import hashlib
import time

import numpy as np

from nexus_ray.planner import replay
from nexus_ray.planner.difficulty import (
    PROBE_SPECS,
    Estimator,
    EstimatorName,
    LogisticModel,
    features,
    spearman,
)
from nexus_ray.planner.options import SAMPLED
from nexus_ray.planner.replay import Recorded, Result
from nexus_ray.planner.table import (
    BinEntry,
    BudgetChoice,
    ModelStamp,
    OptionStats,
    PlanOption,
    PlanTable,
)
from nexus_ray.search import registry


def menu(
    sizes: list[int],
    pool_samples: int,
    temperatures: tuple[float, ...] = (1.0,),
    runs: tuple[PlanOption, ...] = (),
) -> list[PlanOption]:
    """The plans calibration compares: stop at the probe; extend to n samples at each
    temperature and vote; and the strategies run for real (``runs``, see ``run_options``)."""
    if any(n < 2 for n in sizes):
        raise ValueError("plan sizes are numbers of samples >= 2")
    too_big = [n for n in sizes if n > pool_samples + 1]
    if too_big:
        raise ValueError(
            f"plan sizes {too_big} need more samples than the pools hold ({pool_samples} + greedy)"
        )
    sampled = [
        PlanOption(strategy=s, n=n, temperature=t)
        for t in temperatures
        for n in sizes
        for s in ("majority", "weighted")
    ]
    return [PlanOption(strategy="stop"), *sampled, *runs]


def run_options(strategies: list[str], sizes: list[int]) -> tuple[PlanOption, ...]:
    """Every strategy that calibration runs for real (not replayable from samples) at each size."""
    options = []
    for name in strategies:
        spec, _ = registry.get(name)
        if name in (*SAMPLED, "best_of_n") or not spec.takes_budget:
            raise ValueError(
                f"{name!r} is replayed from the pools or takes no budget; --strategies takes tree "
                f"searches and other strategies run per problem (e.g. beam, dvts, mcts)"
            )
        options += [PlanOption(strategy=name, n=n) for n in sizes]
    return tuple(options)


def fold(problem: str) -> int:
    """The cross-validation half a problem belongs to, fixed by its text."""
    return hashlib.sha256(problem.encode()).digest()[0] & 1


def quantile_edges(values: list[float], bins: int) -> list[float]:
    """Upper boundaries of the first bins-1 bins at equal-count quantiles. Each edge is a value
    of the data, so no bin is empty; ties can merge bins (fewer edges)."""
    qs = np.quantile(np.asarray(values), [i / bins for i in range(1, bins)], method="lower")
    edges = sorted({float(q) for q in qs})
    if edges and edges[-1] >= max(values):
        edges.pop()
    return edges


def choose(candidates: list[int], results: dict[int, list[Result]], members: list[int]) -> int:
    """The candidate plan with the best accuracy on ``members``, ties to the cheaper."""

    def key(o: int) -> tuple[float, float]:
        rs = [results[o][i] for i in members]
        return (sum(r.correct for r in rs) / len(rs), -sum(r.compute for r in rs) / len(rs))

    return max(candidates, key=key)


def cross_validated(
    candidates: list[int], results: dict[int, list[Result]], members: list[int], folds: list[int]
) -> float:
    """Accuracy of 'choose on one half, score on the other', both ways, over ``members``."""
    halves = [[i for i in members if folds[i] == f] for f in (0, 1)]
    if not halves[0] or not halves[1]:
        o = choose(candidates, results, members)
        return sum(results[o][i].correct for i in members) / len(members)
    right = 0
    for pick_on, score_on in ((halves[0], halves[1]), (halves[1], halves[0])):
        o = choose(candidates, results, pick_on)
        right += sum(results[o][i].correct for i in score_on)
    return right / len(members)


def fit_learned(recs: list[Recorded]) -> LogisticModel:
    """The learned estimator's model: prompt and probe features -> pass@1 on the calibration pools."""
    probes = replay.probes(recs, Estimator(name="learned", probe=PROBE_SPECS["learned"]))
    x = np.array([features(r.pool.problem, p) for r, p in zip(recs, probes)])
    y = np.array([r.pass_at_1 for r in recs])
    return LogisticModel.fit(x, y)


def build_table(
    recs: list[Recorded],
    estimator_name: EstimatorName,
    *,
    dataset: str,
    seed: int,
    policy: ModelStamp,
    prm: ModelStamp,
    bins: int = 5,
    sizes: tuple[int, ...] = (4, 8, 16, 32),
    early_exit: bool = True,
    temperatures: tuple[float, ...] = (1.0,),
    runs: tuple[PlanOption, ...] = (),
) -> PlanTable:
    if len(recs) < 2 * bins:
        raise ValueError(f"{len(recs)} calibration problems are too few for {bins} bins (need >= {2 * bins})")
    missing = sorted({o.label for o in runs for r in recs if o.label not in r.pool.runs})
    missing += [f"t={t:g}" for t in temperatures if t != 1.0 and any(t not in r.pool.tempered for r in recs)]
    if missing:
        raise ValueError(f"the pools lack {', '.join(missing)}: record pools with them into a new --out")
    model = fit_learned(recs) if estimator_name == "learned" else None
    estimator = Estimator.named(estimator_name, model)
    options = menu(list(sizes), min(len(r.pool.samples) for r in recs), temperatures, runs)
    results = {o: replay.option_results(recs, estimator, opt, early_exit) for o, opt in enumerate(options)}
    diffs = replay.difficulties(recs, estimator)
    edges = quantile_edges(diffs, bins)
    folds = [fold(r.pool.problem) for r in recs]
    budgets = [1, *sizes]
    probe_size = estimator.probe.samples
    entries = []
    for b in range(len(edges) + 1):
        members = [i for i, d in enumerate(diffs) if bisect.bisect_left(edges, d) == b]
        stats = [
            OptionStats(
                option=opt,
                compute=_mean(results[o], members, "compute"),
                accuracy=_mean(results[o], members, "correct"),
            )
            for o, opt in enumerate(options)
        ]
        choices = []
        for budget in budgets:
            candidates = [o for o, opt in enumerate(options) if _affordable(opt, budget, probe_size)]
            o = choose(candidates, results, members)
            choices.append(
                BudgetChoice(
                    budget=budget,
                    option=options[o],
                    compute=stats[o].compute,
                    accuracy=stats[o].accuracy,
                    cv_accuracy=cross_validated(candidates, results, members, folds),
                )
            )
        entries.append(
            BinEntry(problems=len(members), weight=len(members) / len(recs), choices=choices, options=stats)
        )
    oracle = [1 - r.pass_at_1 for r in recs]
    return PlanTable(
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        dataset=dataset,
        problems=len(recs),
        seed=seed,
        policy=policy,
        prm=prm,
        estimator=estimator,
        early_exit=early_exit,
        edges=edges,
        bins=entries,
        spearman_vs_oracle=round(spearman(diffs, oracle), 4),
    )


def _affordable(option: PlanOption, budget: int, probe_size: int) -> bool:
    """Within ``budget`` generations: a sampled plan extends the probe, a run starts afresh."""
    if option.strategy == "stop":
        return True
    return (probe_size < option.n if option.sampled else True) and option.n <= budget


def _mean(results: list[Result], members: list[int], field: str) -> float:
    return float(np.mean([float(getattr(results[i], field)) for i in members]))
