"""Diverse verifier tree search (search-and-learn): N/M independent subtrees.

Each round every live subtree samples M candidate next steps and greedily keeps the one the
PRM scores highest; a subtree stops when its path finishes. The N/M final paths are the
candidates, chosen among by best-of-N weighted. Independent subtrees keep the search diverse
where a shared beam would collapse onto one prefix.
"""

from __future__ import annotations

from nexus_ray.search.base import SearchContext, worst_case
from nexus_ray.search.beam import BeamParams
from nexus_ray.search.paths import Path, expand, paths_result, round_seed, score
from nexus_ray.search.registry import register
from nexus_ray.search.result import SearchResult


class DVTSParams(BeamParams):
    pass


@register("dvts", DVTSParams, needs_prm=True, stepwise=True)
async def dvts(ctx: SearchContext, params: DVTSParams) -> SearchResult:
    prm = ctx.require_prm("dvts")
    ledger = ctx.new_ledger()
    subtrees = [Path() for _ in range(params.n // params.m)]
    truncated = False
    for r in range(params.max_rounds):
        live = [i for i, p in enumerate(subtrees) if not p.done]
        if not live:
            break
        if not ctx.fits(
            ledger, worst_case(ctx, ledger, [subtrees[i] for i in live], params.m, params.max_step_tokens)
        ):
            truncated = True
            break
        kids = await expand(
            ctx.policy,
            ledger,
            ctx.prompt,
            ctx.fmt,
            [subtrees[i] for i in live],
            params.m,
            params.temperature,
            params.max_step_tokens,
            round_seed(ctx.seed, r),
        )
        flat = await score(
            prm, ledger, ctx.prompt, ctx.fmt, [c for k in kids for c in k], params.aggregation, ctx.messages
        )
        for j, i in enumerate(live):
            group = flat[j * params.m : (j + 1) * params.m]
            subtrees[i] = max(group, key=lambda c: c.score or 0.0)
    ledger.generations += params.n
    finished = [p for p in subtrees if p.done]
    return paths_result(
        "dvts", ctx.fmt, finished or subtrees, params.selection, ledger, truncated or not finished
    )
