"""Best-of-N: sample N complete solutions, optionally score them with the PRM, pick one.

With ``selection="majority"`` and no PRM this is self-consistency; with a PRM,
``weighted`` is Snell et al.'s best-of-N weighted and ``argmax`` the single best candidate.
All N samples go to the engine in one call, and all N solutions to the PRM in one call.
``confidence``: each PRM score is multiplied by the policy's probability of the sample's least
likely token (the sampler returns the logprobs, so it costs nothing). The PRM and the policy
miss different errors: on the zoo the product ranks a right sample above a wrong one of the
same problem 84% of the time against the PRM's 74% (benchmarks/RESULTS.md, selection signals).
"""

from __future__ import annotations

import math

from nexus_ray.engines.base import Completion, GenerationParams
from nexus_ray.search.aggregate import aggregate_steps, select
from nexus_ray.search.base import ScoredSearchParams, SearchContext
from nexus_ray.search.full_samples import affordable, draw, score, score_requests
from nexus_ray.search.ledger import ComputeLedger
from nexus_ray.search.registry import register
from nexus_ray.search.result import Candidate, SearchResult


class BestOfNParams(ScoredSearchParams):
    n: int = 8
    temperature: float = 1.0
    confidence: bool = False  # PRM score x P(the sample's least likely token)

    @classmethod
    def for_budget(cls, generations: int, **overrides) -> BestOfNParams:
        return cls(**{"n": max(1, generations), **overrides})


async def sample_and_select(
    ctx: SearchContext,
    ledger: ComputeLedger,
    n: int,
    params: BestOfNParams,
    seed: int | None,
) -> list[Candidate]:
    """Draw n full samples in one call and score them in one PRM call (when selecting with it)."""
    gen = GenerationParams(
        n=n,
        temperature=params.temperature,
        max_tokens=params.max_tokens,
        seed=seed,
        logprobs=params.confidence,
    )
    drawn = await draw(ctx, ledger, gen)
    texts = [c.text for c in drawn]
    answers = [ctx.fmt.answer(t) for t in texts]
    if params.selection == "majority":
        return [Candidate(t, a) for t, a in zip(texts, answers)]
    scored = await score(ctx, ledger, score_requests(ctx, texts), "best_of_n")
    return [
        Candidate(t, a, aggregate_steps(s.scores, params.aggregation) * least_likely(c, params), s.scores)
        for c, t, a, s in zip(drawn, texts, answers, scored)
    ]


def least_likely(c: Completion, params: BestOfNParams) -> float:
    """The policy's probability of the sample's least likely token (1 unless ``confidence``)."""
    return math.exp(min(c.logprobs or (0.0,))) if params.confidence else 1.0


def choose(
    name: str, candidates: list[Candidate], params: BestOfNParams, ledger: ComputeLedger, truncated: bool
) -> SearchResult:
    if not candidates:
        return SearchResult(name, None, "", ledger, [], truncated=True)
    scores = None if params.selection == "majority" else [c.score or 0.0 for c in candidates]
    i = select([c.answer for c in candidates], scores, params.selection)
    return SearchResult(name, candidates[i].answer, candidates[i].text, ledger, candidates, truncated)


@register("best_of_n", BestOfNParams, needs_prm=False)
async def best_of_n(ctx: SearchContext, params: BestOfNParams) -> SearchResult:
    if params.selection != "majority":
        ctx.require_prm(f"best_of_n with selection {params.selection!r} (use 'majority' without one)")
    ledger = ctx.new_ledger()
    prompt_tokens = ctx.policy.count_tokens(ctx.prompt)
    scored = params.selection != "majority"
    n = affordable(ctx.budget, ledger, prompt_tokens, params.n, params.max_tokens, scored)
    candidates = await sample_and_select(ctx, ledger, n, params, ctx.seed) if n else []
    return choose("best_of_n", candidates, params, ledger, truncated=n < params.n)
