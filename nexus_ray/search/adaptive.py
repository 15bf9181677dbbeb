"""Adaptive sampling: draw samples in small rounds and stop once the vote is decided.

After each round the leading answer has ``a`` votes and the rest ``b``. With a uniform prior
the leader's share p has posterior Beta(a + 1, b + 1); sampling stops when
P(p > 1/2) >= ``confidence`` (the leader is then very probably the majority answer of the
full distribution) or at ``max_n`` samples. Unused budget is simply not spent: the ledger
shows what was. The final pick uses the same selection modes as best-of-N.
"""

from __future__ import annotations

from collections import Counter
from math import comb

from nexus_ray.search.base import SearchContext
from nexus_ray.search.best_of_n import BestOfNParams, choose, sample_and_select
from nexus_ray.search.full_samples import affordable
from nexus_ray.search.paths import round_seed
from nexus_ray.search.registry import register
from nexus_ray.search.result import Candidate, SearchResult


class AdaptiveParams(BestOfNParams):
    n: int = 32  # the most samples it may draw
    round_size: int = 4
    confidence: float = 0.95
    selection: str = "majority"  # type: ignore[assignment]


def prob_leader_is_majority(leader: int, others: int) -> float:
    """P(p > 1/2) for p ~ Beta(leader + 1, others + 1), exactly, via the binomial identity
    I_x(a, b) = P(Binomial(a + b - 1, x) >= a) for integer a, b."""
    a, b = leader + 1, others + 1
    trials = a + b - 1
    cdf_half = sum(comb(trials, j) for j in range(a, trials + 1)) / 2**trials
    return 1.0 - cdf_half


@register("adaptive", AdaptiveParams, needs_prm=False)
async def adaptive(ctx: SearchContext, params: AdaptiveParams) -> SearchResult:
    if params.selection != "majority":
        ctx.require_prm(f"adaptive with selection {params.selection!r}")
    ledger = ctx.new_ledger()
    candidates: list[Candidate] = []
    truncated = False
    rounds = 0
    prompt_tokens = ctx.policy.count_tokens(ctx.prompt)
    scored = params.selection != "majority"
    while len(candidates) < params.n:
        want = min(params.round_size, params.n - len(candidates))
        k = affordable(ctx.budget, ledger, prompt_tokens, want, params.max_tokens, scored)
        if k == 0:
            truncated = True
            break
        candidates += await sample_and_select(ctx, ledger, k, params, round_seed(ctx.seed, rounds))
        rounds += 1
        votes = Counter(c.answer for c in candidates if c.answer is not None).most_common()
        if votes:
            leader = votes[0][1]
            if prob_leader_is_majority(leader, len(candidates) - leader) >= params.confidence:
                break
    return choose("adaptive", candidates, params, ledger, truncated)
