"""Best-of-N: sample N complete solutions, optionally score them with the PRM, pick one.

With ``selection="majority"`` and no PRM this is self-consistency; with a PRM,
``weighted`` is Snell et al.'s best-of-N weighted and ``argmax`` the single best candidate.
All N samples go to the engine in one call, and all N solutions to the PRM in one call.
"""

from __future__ import annotations

from nexus_ray.engines.base import GenerationParams, ScoreRequest
from nexus_ray.search.aggregate import aggregate_steps, select
from nexus_ray.search.ledger import ComputeLedger, worst_case_round
from nexus_ray.search.registry import ScoredSearchParams, SearchContext, register
from nexus_ray.search.result import Candidate, SearchResult


class BestOfNParams(ScoredSearchParams):
    n: int = 8
    temperature: float = 1.0

    @classmethod
    def for_budget(cls, generations: int, **overrides) -> "BestOfNParams":
        return cls(**{"n": max(1, generations), **overrides})


def affordable(ctx: SearchContext, ledger: ComputeLedger, wanted: int, max_tokens: int, scored: bool) -> int:
    """How many of ``wanted`` full samples of the prompt fit the budget in the worst case."""
    prompt_tokens = [ctx.policy.count_tokens(ctx.prompt)]
    k = wanted
    while k > 0 and not ctx.fits(ledger, worst_case_round(ledger, prompt_tokens, k, max_tokens, scored)):
        k -= 1
    return k


async def sample_and_select(
    ctx: SearchContext,
    ledger: ComputeLedger,
    n: int,
    params: BestOfNParams,
    seed: int | None,
) -> list[Candidate]:
    """Draw n full samples in one call and score them in one PRM call (when selecting with it)."""
    use_prm = params.selection != "majority"
    gen = GenerationParams(n=n, temperature=params.temperature, max_tokens=params.max_tokens, seed=seed)
    [result] = await ctx.policy.generate([ctx.prompt], gen)
    ledger.charge_generation([result])
    ledger.generations += n
    texts = [c.text for c in result.completions]
    answers = [ctx.fmt.answer(t) for t in texts]
    if not use_prm:
        return [Candidate(t, a) for t, a in zip(texts, answers)]
    prm = ctx.require_prm("best_of_n")
    scored = await prm.score([ScoreRequest(ctx.prompt, ctx.fmt.steps(t)) for t in texts])
    ledger.charge_scoring(scored)
    return [
        Candidate(t, a, aggregate_steps(s.scores, params.aggregation), s.scores)
        for t, a, s in zip(texts, answers, scored)
    ]


def choose(name: str, candidates: list[Candidate], params: BestOfNParams, ledger: ComputeLedger, truncated: bool) -> SearchResult:
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
    n = affordable(ctx, ledger, params.n, params.max_tokens, params.selection != "majority")
    candidates = await sample_and_select(ctx, ledger, n, params, ctx.seed) if n else []
    return choose("best_of_n", candidates, params, ledger, truncated=n < params.n)
