"""Every strategy end to end on the zoo policy and PRM (transformers engine)."""

import asyncio
import math

import pytest

from nexus_ray.engines.base import GenerationParams
from nexus_ray.search import registry
from nexus_ray.search.base import SearchContext
from nexus_ray.search.ledger import Budget
from nexus_ray.tasks import datasets
from nexus_ray.tasks.format import ARITH
from nexus_ray.tasks.grading import is_equivalent

EXAMPLES = [e for e in datasets.load("arith-test") if e.level in (2, 4)][:4:2]
STRATEGIES = ["greedy", "majority", "weighted", "adaptive", "beam", "dvts", "lookahead", "mcts", "particles"]


@pytest.mark.parametrize("name", STRATEGIES)
def test_strategy_runs_on_the_zoo(name, policy_engine, prm_engine):
    for e in EXAMPLES:
        ctx = SearchContext(policy_engine, prm_engine, ARITH.prompt(e.problem), ARITH, Budget(4000), seed=1)
        result = asyncio.run(registry.run(name, ctx, None if name == "greedy" else 8))
        assert result.ledger.policy_generated_tokens > 0
        assert result.ledger.policy_token_equivalents <= 4000
        if registry.get(name)[0].needs_prm or name == "weighted":
            assert result.ledger.prm_tokens > 0
        assert result.answer is None or result.answer.lstrip("-").isdigit()
        assert result.solution in [c.text for c in result.candidates]


def test_search_beats_greedy_on_hard_problems(policy_engine, prm_engine):
    hard = [e for e in datasets.load("arith-test") if e.level == 5][:12]

    def accuracy(name, generations):
        hits = 0
        for e in hard:
            ctx = SearchContext(policy_engine, prm_engine, ARITH.prompt(e.problem), ARITH, seed=0)
            r = asyncio.run(registry.run(name, ctx, generations))
            hits += is_equivalent(r.answer, e.answer)
        return hits / len(hard)

    assert accuracy("weighted", 16) > accuracy("greedy", None)


def test_weighted_with_confidence_multiplies_each_prm_score_by_the_least_likely_token(
    policy_engine, prm_engine
):
    """Same samples as plain weighted (logprobs change nothing drawn); each score is the PRM's
    times exp(min token logprob) of that sample, recomputed here from the engine directly."""
    e = next(e for e in datasets.load("arith-test") if e.level == 4)
    prompt = ARITH.prompt(e.problem)

    def run(**overrides):
        ctx = SearchContext(policy_engine, prm_engine, prompt, ARITH, seed=3)
        return asyncio.run(registry.run("weighted", ctx, 6, overrides))

    plain, mixed = run(), run(confidence=True)
    assert [c.text for c in plain.candidates] == [c.text for c in mixed.candidates]
    assert plain.ledger.policy_token_equivalents == mixed.ledger.policy_token_equivalents
    [drawn] = policy_engine.generate_sync(
        [prompt], GenerationParams(n=6, temperature=1.0, max_tokens=256, seed=3, logprobs=True)
    )
    for p, m, c in zip(plain.candidates, mixed.candidates, drawn.completions):
        assert c.text == p.text
        assert m.score == pytest.approx(p.score * math.exp(min(c.logprobs)))
    assert any(m.score < p.score for p, m in zip(plain.candidates, mixed.candidates))
