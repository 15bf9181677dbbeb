"""DeepConf offline (Fu et al. 2025): sample N traces, keep the most confident fraction, and
vote weighted by confidence.

The engine returns each token's k largest logprobs; ``confidence.py`` turns them into one
confidence per trace (lowest sliding-window group, tail or mean). Only the ``keep`` fraction
of traces with the highest confidence vote, each with its confidence as weight: confident
traces outvote confused ones without a PRM. All N traces go to the engine in one call.
"""

from __future__ import annotations

from pydantic import Field

from nexus_ray.engines.base import Completion, ConfidenceStop, GenerationParams
from nexus_ray.search.aggregate import select
from nexus_ray.search.base import SearchContext, StrategyParams
from nexus_ray.search.confidence import (
    TraceConfidence,
    most_confident,
    token_confidences,
    trace_confidence,
)
from nexus_ray.search.full_samples import affordable, draw
from nexus_ray.search.ledger import ComputeLedger
from nexus_ray.search.registry import register
from nexus_ray.search.result import Candidate, SearchResult


class DeepConfParams(StrategyParams):
    """What both DeepConf strategies share. The paper's groups are 2,048 tokens of traces of
    thousands; arith traces are about 60 tokens, so a group is 16 (about one step and a half).
    ``top_k`` 5: the zoo's character vocabulary has few plausible tokens at any position, and
    a larger k would average mostly over ones the model never writes."""

    n: int = Field(16, ge=1)  # traces, at most
    temperature: float = 1.0
    keep: float = Field(0.9, gt=0, le=1)  # eta: the most confident fraction that votes (paper: 0.1, 0.9)
    window: int = Field(16, ge=1)  # tokens per group confidence
    top_k: int = Field(5, ge=1)  # logprobs per token confidence

    @classmethod
    def for_budget(cls, generations: int, **overrides) -> DeepConfParams:
        return cls(**{"n": max(1, generations), **overrides})


class DeepConfOfflineParams(DeepConfParams):
    confidence: TraceConfidence = "lowest"
    tail: int = Field(16, ge=1)  # tokens the ``tail`` confidence reads at the end of a trace


async def draw_traces(
    ctx: SearchContext,
    ledger: ComputeLedger,
    n: int,
    params: DeepConfParams,
    seed: int | None,
    stop: ConfidenceStop | None = None,
) -> list[Completion]:
    """``n`` traces with their top-k logprobs in one call (cut by ``stop`` if given), charged."""
    gen = GenerationParams(
        n=n,
        temperature=params.temperature,
        max_tokens=params.max_tokens,
        seed=seed,
        top_logprobs=params.top_k,
        confidence_stop=stop,
    )
    return await draw(ctx, ledger, gen)


def vote(name: str, voters: list[Candidate], ledger: ComputeLedger, truncated: bool) -> SearchResult:
    """The answer with the most confidence behind it (each voter's ``score`` is its confidence)."""
    if not voters:
        return SearchResult(name, None, "", ledger, [], truncated=True)
    i = select([c.answer for c in voters], [c.score or 0.0 for c in voters], "weighted")
    return SearchResult(name, voters[i].answer, voters[i].text, ledger, voters, truncated)


@register("deepconf", DeepConfOfflineParams, needs_prm=False)
async def deepconf(ctx: SearchContext, params: DeepConfOfflineParams) -> SearchResult:
    ledger = ctx.new_ledger()
    prompt_tokens = ctx.policy.count_tokens(ctx.prompt)
    n = affordable(ctx.budget, ledger, prompt_tokens, params.n, params.max_tokens, scored=False)
    traces = await draw_traces(ctx, ledger, n, params, ctx.seed) if n else []
    confidences = [
        trace_confidence(token_confidences(c, params.top_k), params.confidence, params.window, params.tail)
        for c in traces
    ]
    voters = [
        Candidate(traces[i].text, ctx.fmt.answer(traces[i].text), confidences[i])
        for i in most_confident(confidences, params.keep)
    ]
    return vote("deepconf", voters, ledger, truncated=n < params.n)
