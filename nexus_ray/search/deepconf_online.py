"""DeepConf online (Fu et al. 2025): a few warm-up traces set a confidence bar; later traces
are cut the moment they fall below it, and sampling stops once the vote is safe.

1. ``warmup`` traces are drawn whole; the bar is the (100 - 100 keep)th percentile of their
   lowest group confidences (keep 0.9: DeepConf-high, a trace as shaky as the shakiest tenth
   is cut; keep 0.1: DeepConf-low, only traces as sure as the surest tenth survive).
2. Later traces, ``round_size`` per engine call, carry a ``ConfidenceStop``: the engine ends a
   trace as soon as the mean confidence of its last ``window`` tokens drops below the bar, so
   only the tokens generated are charged.
3. A trace votes, weighted by its lowest group confidence, if that reaches the bar (as in the
   paper's reference code: a warm-up trace below it would have been cut, a cut trace never
   reaches it). After the warm-up and after every round the vote is read; sampling stops once
   its leader holds ``consensus`` of the weight, or at ``n`` traces.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from nexus_ray.engines.base import Completion, ConfidenceStop
from nexus_ray.search.base import SearchContext
from nexus_ray.search.confidence import leader_share, stop_threshold, token_confidences, trace_confidence
from nexus_ray.search.deepconf_offline import DeepConfParams, draw_traces, vote
from nexus_ray.search.full_samples import affordable
from nexus_ray.search.paths import round_seed
from nexus_ray.search.registry import register
from nexus_ray.search.result import Candidate, SearchResult


class DeepConfOnlineParams(DeepConfParams):
    warmup: int = Field(4, ge=1)  # N_init: traces drawn whole to set the bar
    consensus: float = Field(0.95, gt=0, le=1)  # tau: the leader's weighted share that ends sampling
    round_size: int = Field(4, ge=1)  # traces per engine call after the warm-up

    @model_validator(mode="after")
    def _warmup_within_n(self) -> DeepConfOnlineParams:
        if self.warmup > self.n:
            raise ValueError(f"warmup ({self.warmup}) must not exceed n ({self.n})")
        return self

    @classmethod
    def for_budget(cls, generations: int, **overrides) -> DeepConfOnlineParams:
        """A quarter of the budget, at least 4 traces, warms up: fewer make a noisy bar, and a
        vote of two or three warm-up traces that agree by chance would end sampling at once."""
        n = max(1, overrides.pop("n", generations))
        return cls(**{"n": n, "warmup": min(n, max(4, n // 4)), **overrides})


def traced(ctx: SearchContext, c: Completion, params: DeepConfParams) -> Candidate:
    """A trace with its answer and its lowest group confidence: its weight, what the bar is
    read from, and what the engine's stop watches."""
    confidence = trace_confidence(token_confidences(c, params.top_k), "lowest", params.window, params.window)
    return Candidate(c.text, ctx.fmt.answer(c.text), confidence)


def voters(traces: list[Candidate], bar: float) -> list[Candidate]:
    return [t for t in traces if (t.score or 0.0) >= bar]


def consensus(candidates: list[Candidate]) -> float:
    """The weighted vote's leader share (a candidate's ``score`` is its confidence)."""
    return leader_share([c.answer for c in candidates], [c.score or 0.0 for c in candidates])


@register("deepconf_online", DeepConfOnlineParams, needs_prm=False)
async def deepconf_online(ctx: SearchContext, params: DeepConfOnlineParams) -> SearchResult:
    ledger = ctx.new_ledger()
    prompt_tokens = ctx.policy.count_tokens(ctx.prompt)
    k = affordable(ctx.budget, ledger, prompt_tokens, params.warmup, params.max_tokens, scored=False)
    warm = await draw_traces(ctx, ledger, k, params, round_seed(ctx.seed, 0)) if k else []
    traces = [traced(ctx, c, params) for c in warm]
    if k < params.warmup:  # too few for a bar: vote with what the budget allowed
        return vote("deepconf_online", traces, ledger, truncated=True)
    bar = stop_threshold([t.score or 0.0 for t in traces], params.keep)
    stop = ConfidenceStop(bar, params.window, params.top_k)
    truncated, rounds = False, 1
    while len(traces) < params.n and consensus(voters(traces, bar)) < params.consensus:
        want = min(params.round_size, params.n - len(traces))
        k = affordable(ctx.budget, ledger, prompt_tokens, want, params.max_tokens, scored=False)
        if k == 0:
            truncated = True
            break
        drawn = await draw_traces(ctx, ledger, k, params, round_seed(ctx.seed, rounds), stop)
        traces += [traced(ctx, c, params) for c in drawn]
        rounds += 1
    return vote("deepconf_online", voters(traces, bar), ledger, truncated)
