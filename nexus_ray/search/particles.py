"""Particle filtering (Puri et al., "Rollout Roulette"): N particles, one step per round.

After each round every particle's PRM score r becomes a weight
w_i = softmax_i(logit(r_i) / temperature), and N particles are drawn from the current ones
by multinomial resampling with replacement (finished particles included, so good finished
solutions multiply and bad ones die out). The answer is chosen among the final particles.
Resampling draws from a seeded generator, so a run is reproducible.
"""

from __future__ import annotations

import math
import random

from nexus_ray.search.base import ScoredSearchParams, SearchContext, worst_case
from nexus_ray.search.paths import Path, expand, paths_result, round_seed, score
from nexus_ray.search.registry import register
from nexus_ray.search.result import SearchResult


class ParticlesParams(ScoredSearchParams):
    n: int = 16
    max_rounds: int = 40
    temperature: float = 0.8  # the policy's sampling temperature
    softmax_temperature: float = 1.0

    @classmethod
    def for_budget(cls, generations: int, **overrides) -> ParticlesParams:
        return cls(**{"n": max(1, generations), **overrides})


def resampling_weights(scores: list[float], temperature: float) -> list[float]:
    eps = 1e-6
    logits = [
        math.log(min(max(s, eps), 1 - eps) / (1 - min(max(s, eps), 1 - eps))) / temperature for s in scores
    ]
    top = max(logits)
    exp = [math.exp(x - top) for x in logits]
    total = sum(exp)
    return [e / total for e in exp]


@register("particles", ParticlesParams, needs_prm=True, stepwise=True)
async def particles(ctx: SearchContext, params: ParticlesParams) -> SearchResult:
    prm = ctx.require_prm("particles")
    ledger = ctx.new_ledger()
    rng = random.Random(ctx.seed)
    pool = [Path() for _ in range(params.n)]
    truncated = False
    for r in range(params.max_rounds):
        live = [i for i, p in enumerate(pool) if not p.done]
        if not live:
            break
        if not ctx.fits(ledger, worst_case(ctx, ledger, [pool[i] for i in live], 1, params.max_step_tokens)):
            truncated = True
            break
        kids = await expand(
            ctx.policy,
            ledger,
            ctx.prompt,
            ctx.fmt,
            [pool[i] for i in live],
            1,
            params.temperature,
            params.max_step_tokens,
            round_seed(ctx.seed, r),
        )
        scored = await score(
            prm, ledger, ctx.prompt, ctx.fmt, [k[0] for k in kids], params.aggregation, ctx.messages
        )
        for i, p in zip(live, scored):
            pool[i] = p
        weights = resampling_weights([p.score or 0.0 for p in pool], params.softmax_temperature)
        pool = rng.choices(pool, weights=weights, k=params.n)
    ledger.generations += params.n
    finished = [p for p in pool if p.done]
    return paths_result(
        "particles", ctx.fmt, finished or pool, params.selection, ledger, truncated or not finished
    )
