"""Step-level beam search (Snell et al.): N beams, width M.

Sample N first steps; score every prefix with the PRM; keep the top N/M; sample M next steps
from each survivor (N prefixes again); repeat until every beam has finished or ``max_rounds``.
Finished beams leave the pool; the answer is chosen over them (best-of-N weighted by default).
With ``lookahead`` k > 0 each candidate is scored at the end of a k-step temperature-0
rollout instead (Snell's lookahead search; see lookahead.py).
"""

from __future__ import annotations

from pydantic import model_validator

from nexus_ray.search.base import ScoredSearchParams, SearchContext, worst_case
from nexus_ray.search.paths import Path, expand, paths_result, round_seed, score
from nexus_ray.search.registry import register
from nexus_ray.search.result import SearchResult


class BeamParams(ScoredSearchParams):
    n: int = 16
    m: int = 4
    max_rounds: int = 40
    lookahead: int = 0
    temperature: float = 0.8

    @model_validator(mode="after")
    def _check(self) -> BeamParams:
        if self.m < 1 or self.n < self.m or self.n % self.m:
            raise ValueError(f"beam needs n a multiple of m >= 1 (got n={self.n}, m={self.m})")
        return self

    @classmethod
    def for_budget(cls, generations: int, **overrides) -> BeamParams:
        m = overrides.get("m", 4)
        k = overrides.get("lookahead", 0)
        n = max(m, (generations // (k + 1)) // m * m)
        return cls(**{"n": n, "m": m, **overrides})


async def _rollout_scores(
    ctx: SearchContext, ledger, paths: list[Path], params: BeamParams, seed
) -> list[Path]:
    """Score each path by the PRM at the end of a k-step greedy rollout (the path keeps its text)."""
    prm = ctx.require_prm("lookahead")
    rolled = list(paths)
    for _ in range(params.lookahead):
        live = [i for i, p in enumerate(rolled) if not p.done]
        if not live:
            break
        kids = await expand(
            ctx.policy,
            ledger,
            ctx.prompt,
            ctx.fmt,
            [rolled[i] for i in live],
            1,
            0.0,
            params.max_step_tokens,
            seed,
        )
        for i, k in zip(live, kids):
            rolled[i] = k[0]
    scored = await score(prm, ledger, ctx.prompt, ctx.fmt, rolled, params.aggregation, ctx.messages)
    return [Path(p.text, p.done, s.score, s.step_scores, p.surprisal) for p, s in zip(paths, scored)]


async def run_beam(ctx: SearchContext, params: BeamParams, name: str) -> SearchResult:
    prm = ctx.require_prm(name)
    ledger = ctx.new_ledger()
    active = [Path()]
    finished: list[Path] = []
    truncated = False
    for r in range(params.max_rounds):
        samples_each = params.n if r == 0 else params.m
        if not ctx.fits(
            ledger, worst_case(ctx, ledger, active, samples_each, params.max_step_tokens, params.lookahead)
        ):
            truncated = True
            break
        seed = round_seed(ctx.seed, r)
        children = [
            c
            for kids in await expand(
                ctx.policy,
                ledger,
                ctx.prompt,
                ctx.fmt,
                active,
                samples_each,
                params.temperature,
                params.max_step_tokens,
                seed,
            )
            for c in kids
        ]
        if params.lookahead:
            children = await _rollout_scores(ctx, ledger, children, params, seed)
        else:
            children = await score(
                prm, ledger, ctx.prompt, ctx.fmt, children, params.aggregation, ctx.messages
            )
        finished += [c for c in children if c.done]
        live = sorted((c for c in children if not c.done), key=lambda c: -(c.score or 0.0))
        active = live[: max(1, params.n // params.m)] if live else []
        if not active or len(finished) >= params.n:
            break
    ledger.generations += params.n * (params.lookahead + 1)
    pool = finished or active
    return paths_result(name, ctx.fmt, pool, params.selection, ledger, truncated or not finished)


@register("beam", BeamParams, needs_prm=True, stepwise=True)
async def beam(ctx: SearchContext, params: BeamParams) -> SearchResult:
    return await run_beam(ctx, params, "beam")
