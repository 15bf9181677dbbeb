"""Lookahead search (Snell et al.): beam search whose candidates are scored by the PRM at the
end of a k-step temperature-0 rollout. Costs N x (k + 1) generations; the rollout text is
used only for scoring, never kept. Beam search is the special case k = 0.
"""

from __future__ import annotations

from nexus_ray.search.base import SearchContext
from nexus_ray.search.beam import BeamParams, run_beam
from nexus_ray.search.registry import register
from nexus_ray.search.result import SearchResult


class LookaheadParams(BeamParams):
    lookahead: int = 1

    @classmethod
    def for_budget(cls, generations: int, **overrides) -> LookaheadParams:
        return super().for_budget(generations, **{"lookahead": 1, **overrides})  # type: ignore[return-value]


@register("lookahead", LookaheadParams, needs_prm=True, stepwise=True)
async def lookahead(ctx: SearchContext, params: LookaheadParams) -> SearchResult:
    if params.lookahead < 1:
        raise ValueError("lookahead needs k >= 1 (k = 0 is plain beam search)")
    return await run_beam(ctx, params, "lookahead")
