"""Best-of-N: sample N complete solutions, optionally score them with the PRM, pick one.

With ``selection="majority"`` and no PRM this is self-consistency; with a PRM,
``weighted`` is Snell et al.'s best-of-N weighted and ``argmax`` the single best candidate.
"""

from __future__ import annotations

from nexus_ray.engines.base import GenerationParams, PolicyEngine, RewardEngine, ScoreRequest
from nexus_ray.search.aggregate import Selection, StepAggregation, aggregate_steps, select
from nexus_ray.search.ledger import ComputeLedger
from nexus_ray.search.result import Candidate, SearchResult
from nexus_ray.tasks.format import TaskFormat


async def best_of_n(
    policy: PolicyEngine,
    prompt: str,
    fmt: TaskFormat,
    n: int,
    prm: RewardEngine | None = None,
    selection: Selection = "weighted",
    aggregation: StepAggregation = "last",
    temperature: float = 1.0,
    seed: int | None = None,
    max_tokens: int = 256,
) -> SearchResult:
    if prm is None and selection != "majority":
        raise ValueError(f"selection {selection!r} needs a PRM; use 'majority' without one")
    ledger = ComputeLedger(policy.num_parameters, prm.num_parameters if prm else 0)
    params = GenerationParams(n=n, temperature=temperature, max_tokens=max_tokens, seed=seed)
    [result] = await policy.generate([prompt], params)
    ledger.charge_generation([result])
    ledger.generations += n
    texts = [c.text for c in result.completions]
    answers = [fmt.answer(t) for t in texts]
    step_scores: list[tuple[float, ...]] = [()] * n
    scores = None
    if prm is not None:
        scored = await prm.score([ScoreRequest(prompt, fmt.steps(t)) for t in texts])
        ledger.charge_scoring(scored)
        step_scores = [s.scores for s in scored]
        scores = [aggregate_steps(s, aggregation) for s in step_scores]
    chosen = select(answers, scores, selection)
    candidates = [
        Candidate(t, a, scores[i] if scores else None, step_scores[i])
        for i, (t, a) in enumerate(zip(texts, answers))
    ]
    return SearchResult("best_of_n", answers[chosen], texts[chosen], ledger, candidates)
