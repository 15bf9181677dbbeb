"""Greedy decoding: one temperature-0 sample, the cheapest answer there is."""

from __future__ import annotations

from nexus_ray.engines.base import GenerationParams
from nexus_ray.search.base import SearchContext, StrategyParams
from nexus_ray.search.ledger import worst_case_round
from nexus_ray.search.registry import register
from nexus_ray.search.result import Candidate, SearchResult


class GreedyParams(StrategyParams):
    pass


@register("greedy", GreedyParams, needs_prm=False, takes_budget=False)
async def greedy(ctx: SearchContext, params: GreedyParams) -> SearchResult:
    ledger = ctx.new_ledger()
    prompt_tokens = ctx.policy.count_tokens(ctx.prompt)
    max_tokens = params.max_tokens
    while max_tokens > 0 and not ctx.fits(
        ledger, worst_case_round(ledger, [prompt_tokens], 1, max_tokens, False)
    ):
        max_tokens //= 2
    if max_tokens == 0:
        return SearchResult("greedy", None, "", ledger, truncated=True)
    [result] = await ctx.policy.generate(
        [ctx.prompt], GenerationParams(temperature=0.0, max_tokens=max_tokens)
    )
    ledger.charge_generation([result])
    ledger.generations += 1
    text = result.completions[0].text
    answer = ctx.fmt.answer(text)
    return SearchResult(
        "greedy", answer, text, ledger, [Candidate(text, answer)], truncated=max_tokens < params.max_tokens
    )
