"""Complete solutions sampled from the prompt in one call: how many fit the budget, drawing
them, scoring them. Best-of-N and adaptive sampling use these, and so does the planner's
online sampler, so all of them price and charge a sample the same way (``paths.py`` is the
step-by-step counterpart)."""

from __future__ import annotations

from nexus_ray.engines.base import Completion, GenerationParams, ScoreRequest, ScoreResult
from nexus_ray.search.base import SearchContext
from nexus_ray.search.ledger import Budget, ComputeLedger, worst_case_round


def affordable(
    budget: Budget | None,
    ledger: ComputeLedger,
    prompt_tokens: int,
    wanted: int,
    max_tokens: int,
    scored: bool,
    reserve: float = 0.0,
) -> int:
    """How many of ``wanted`` full samples of a prompt fit the budget in the worst case, with
    ``reserve`` policy-token equivalents kept for what the caller spends besides them."""
    k = wanted
    while (
        k > 0
        and budget is not None
        and not budget.fits(
            ledger, reserve + worst_case_round(ledger, [prompt_tokens], k, max_tokens, scored)
        )
    ):
        k -= 1
    return k


async def draw(ctx: SearchContext, ledger: ComputeLedger, params: GenerationParams) -> list[Completion]:
    """``params.n`` samples of the prompt in one generate call, charged to the ledger."""
    [result] = await ctx.policy.generate([ctx.prompt], params)
    ledger.charge_generation([result])
    ledger.generations += params.n
    return list(result.completions)


def score_requests(ctx: SearchContext, solutions: list[str]) -> list[ScoreRequest]:
    """The PRM's requests for whole solutions: the prompt, each solution's steps, the turns."""
    return [ScoreRequest(ctx.prompt, ctx.fmt.steps(s), ctx.messages) for s in solutions]


async def score(
    ctx: SearchContext,
    ledger: ComputeLedger,
    requests: list[ScoreRequest],
    strategy: str,
) -> list[ScoreResult]:
    """PRM step scores of whole solutions (their ``score_requests``) in one call, charged to the
    ledger (``strategy`` names who needs the PRM when the context has none)."""
    prm = ctx.require_prm(strategy)
    results = await prm.score(requests)
    ledger.charge_scoring(results, requests)
    return results
