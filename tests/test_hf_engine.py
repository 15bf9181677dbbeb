"""The transformers engine's contract: counts, seeds, stops, logprobs, batching."""

import asyncio
import json
import math

import pytest

from nexus_ray.engines.base import GenerationParams, PolicyEngine, RewardEngine, ScoreRequest, prompt_seed
from nexus_ray.tasks.format import ARITH

PROMPTS = [ARITH.prompt(p) for p in ["12+7*3-5", "4-9", "81*5+50-8", "21-95*9-52+5*3"]]


def test_engines_satisfy_the_protocols(policy_engine, prm_engine):
    assert isinstance(policy_engine, PolicyEngine)
    assert isinstance(prm_engine, RewardEngine)
    assert policy_engine.num_parameters > 0 and prm_engine.num_parameters > 0


def test_token_counts_equal_the_tokenizers(policy_engine):
    tok = policy_engine.tokenizer
    results = asyncio.run(policy_engine.generate(PROMPTS, GenerationParams(n=3, seed=1, max_tokens=100)))
    for prompt, r in zip(PROMPTS, results):
        assert r.prompt_tokens == len(tok(prompt).input_ids) == policy_engine.count_tokens(prompt)
        assert len(r.completions) == 3
        for c in r.completions:
            ended_by_eos = c.finish_reason == "stop" and c.stop_reason is None
            assert c.num_tokens == len(tok(c.text, add_special_tokens=False).input_ids) + ended_by_eos
            assert (c.token_ids[-1] == tok.eos_token_id) == ended_by_eos
            assert tok.decode(c.token_ids, skip_special_tokens=True) == c.text
        assert r.completion_tokens == sum(c.num_tokens for c in r.completions)


def test_prm_token_count_is_every_sequence_it_read(prm_engine):
    """The zoo PRM reads each step after the line before it (format local, declared in its
    config.json): one sequence per step, all of them charged."""
    assert prm_engine.encoder.format == "local"
    req = ScoreRequest(ARITH.prompt("2+3*4"), ("2+12", "14", "A: 14"))
    [r] = prm_engine.score_sync([req])
    tok = prm_engine.tokenizer
    pieces = ["Q: 2+3*4\n2+12\n", "Q: 2+12\n14\n", "Q: 14\nA: 14\n"]
    assert r.tokens == sum(len(tok(p).input_ids) for p in pieces)


def test_a_local_prm_chains_its_step_scores_into_p_still_correct(prm_engine):
    req = ScoreRequest(ARITH.prompt("12+7*3-5"), ("12+21-5", "33-5", "28", "A: 28"))
    [whole] = prm_engine.score_sync([req])
    alone = [
        prm_engine.score_sync([ScoreRequest(ARITH.prompt(prev), (step,))])[0].scores[0]
        for prev, step in zip(["12+7*3-5", "12+21-5", "33-5", "28"], req.steps)
    ]
    assert whole.scores == pytest.approx([math.prod(alone[: i + 1]) for i in range(4)], rel=1e-5)
    assert list(whole.scores) == sorted(whole.scores, reverse=True)


def test_a_prm_read_in_another_format_than_it_declares_is_refused():
    from nexus_ray.config import RewardConfig
    from nexus_ray.engines import build_reward_engine
    from nexus_ray.engines.prm_format import PrmFormatError

    with pytest.raises(PrmFormatError, match="declares prm_format 'local'.*set prm.format: local"):
        build_reward_engine(RewardConfig(model="arith-prm", format="token"))


def test_step_mode_stops_at_the_delimiter_and_keeps_it(policy_engine):
    params = GenerationParams(n=4, seed=3, stop=("\n",), max_tokens=60)
    for r in policy_engine.generate_sync(PROMPTS, params):
        for c in r.completions:
            assert c.text.endswith("\n") and c.text.count("\n") == 1
            assert c.finish_reason == "stop" and c.stop_reason == "\n"


def texts(result):
    return [c.text for c in result.completions]


def test_seeds_reproduce_independently_of_the_batch(policy_engine):
    params = GenerationParams(n=4, seed=11, max_tokens=80)
    batched = policy_engine.generate_sync(PROMPTS, params)
    # prompt i of a call samples with prompt_seed(seed, i), whatever else is in the call
    alone = policy_engine.generate_sync(
        PROMPTS[2:3], GenerationParams(n=4, seed=prompt_seed(11, 2), max_tokens=80)
    )[0]
    assert texts(alone) == texts(batched[2])
    assert texts(policy_engine.generate_sync(PROMPTS, params)[0]) == texts(batched[0])
    hard = PROMPTS[3:4]  # a problem the policy is unsure about, so seeds matter
    one = policy_engine.generate_sync(hard, GenerationParams(n=4, seed=11, max_tokens=80))[0]
    other = policy_engine.generate_sync(hard, GenerationParams(n=4, seed=12, max_tokens=80))[0]
    assert texts(other) != texts(one)


def test_duplicate_prompts_in_one_call_draw_different_samples(policy_engine):
    hard = ARITH.prompt("21-95*9-52+5*3")
    results = policy_engine.generate_sync([hard] * 8, GenerationParams(seed=0, max_tokens=80))
    assert len({r.completions[0].text for r in results}) > 1


def test_logprobs_are_per_token_and_sum_like_a_score(policy_engine):
    params = GenerationParams(n=2, seed=5, max_tokens=40, logprobs=True)
    for r in policy_engine.generate_sync(PROMPTS, params):
        for c in r.completions:
            assert c.logprobs is not None and len(c.logprobs) == c.num_tokens
            assert all(lp <= 0 and math.isfinite(lp) for lp in c.logprobs)


def test_length_finish(policy_engine):
    [r] = policy_engine.generate_sync(PROMPTS[3:], GenerationParams(temperature=0, max_tokens=5))
    assert r.completions[0].finish_reason == "length" and r.completions[0].num_tokens == 5


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"n": 0}, "n must be"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
    ],
)
def test_bad_params_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GenerationParams(**kwargs)


def test_top_p_tiny_is_greedy(policy_engine):
    greedy = policy_engine.generate_sync(PROMPTS, GenerationParams(temperature=0, max_tokens=60))
    nucleus = policy_engine.generate_sync(PROMPTS, GenerationParams(top_p=1e-6, seed=0, max_tokens=60))
    assert [r.completions[0].text for r in greedy] == [r.completions[0].text for r in nucleus]


def test_concurrent_calls_are_merged_and_keep_their_seeds(policy_engine, monkeypatch):
    batches = []
    original = policy_engine.generate_seeded

    def spy(prompts, seeds, params):
        batches.append(len(prompts))
        return original(prompts, seeds, params)

    monkeypatch.setattr(policy_engine, "generate_seeded", spy)
    params = GenerationParams(n=2, seed=4, max_tokens=60)

    async def together():
        return await asyncio.gather(*(policy_engine.generate([p], params) for p in PROMPTS))

    merged = asyncio.run(together())
    assert batches == [len(PROMPTS)]  # one engine batch for four concurrent calls
    for p, r in zip(PROMPTS, merged):
        [alone] = policy_engine.generate_sync([p], params)
        assert texts(r[0]) == texts(alone)


def test_an_engine_error_reaches_every_caller(prm_engine, monkeypatch):
    def boom(requests):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(prm_engine, "score_sync", boom)

    async def two():
        req = [ScoreRequest("Q: 1+1\n", ("2",))]
        return await asyncio.gather(prm_engine.score(req), prm_engine.score(req), return_exceptions=True)

    results = asyncio.run(two())
    assert all(isinstance(r, RuntimeError) for r in results)


def _cached_engine(tokens: int = 65536):
    from nexus_ray.engines.hf import HFPolicyEngine
    from nexus_ray.zoo.registry import resolve

    return HFPolicyEngine(resolve("arith-policy"), prefix_cache_tokens=tokens)


def test_prefix_cache_gives_the_same_samples_for_fewer_prefill_tokens(policy_engine):
    """Paths extended step by step, as tree search does, with duplicates in a call: the cached
    engine samples exactly what the uncached one does and prefills only the new tokens."""
    cached = _cached_engine()
    prompts = list(PROMPTS)
    plain_before = policy_engine.prefill_tokens
    for round_ in range(4):
        params = GenerationParams(n=3, temperature=1.0, max_tokens=40, stop=("\n",), seed=round_)
        a = policy_engine.generate_sync(prompts, params)
        b = cached.generate_sync(prompts, params)
        assert [[c.token_ids for c in r.completions] for r in a] == [
            [c.token_ids for c in r.completions] for r in b
        ]
        assert [r.prompt_tokens for r in a] == [r.prompt_tokens for r in b]
        prompts = [p + r.completions[0].text for p, r in zip(prompts, a)] + [prompts[0], prompts[0]]
    plain = policy_engine.prefill_tokens - plain_before
    assert cached.prefill_tokens < plain / 2
    greedy = GenerationParams(n=1, temperature=0, max_tokens=60, logprobs=True)
    for x, y in zip(policy_engine.generate_sync(prompts, greedy), cached.generate_sync(prompts, greedy)):
        assert x.completions[0].token_ids == y.completions[0].token_ids
        assert max(abs(p - q) for p, q in zip(x.completions[0].logprobs, y.completions[0].logprobs)) < 1e-4


def test_a_prompt_cached_whole_is_not_prefilled_again():
    cached = _cached_engine()
    params = GenerationParams(n=2, temperature=1.0, max_tokens=10, seed=3)
    first = cached.generate_sync(PROMPTS[:2], params)
    before = cached.prefill_tokens
    again = cached.generate_sync(PROMPTS[:2], params)
    assert cached.prefill_tokens == before
    assert [[c.token_ids for c in r.completions] for r in first] == [
        [c.token_ids for c in r.completions] for r in again
    ]


def test_prefix_cache_is_bounded_and_evicts_the_least_recently_used():
    import torch

    from nexus_ray.engines.prefix_cache import CachedPrompt, PrefixCache

    def entry(n: int) -> CachedPrompt:
        kv = (torch.zeros(1, n, 2),)
        return CachedPrompt(kv, kv, torch.zeros(3))

    cache = PrefixCache(max_tokens=10)
    cache.put([1, 2, 3], entry(3))
    cache.put([1, 2, 3, 4], entry(4))
    assert cache.longest([1, 2, 3, 4, 5]) == (4, cache.longest([1, 2, 3, 4])[1])
    cache.longest([1, 2, 3])  # now the most recently used
    cache.put([7, 8, 9, 9], entry(4))  # 11 tokens: [1, 2, 3, 4] goes
    assert cache.tokens == 7 and len(cache) == 2
    assert cache.longest([1, 2, 3, 4, 5])[0] == 3
    assert cache.longest([5, 6])[0] == 0
    cache.put(list(range(11)), entry(11))  # larger than the whole cache: not kept
    assert cache.longest(list(range(11)))[0] == 0


@pytest.mark.parametrize("strategy", ["beam", "dvts", "lookahead", "mcts", "particles", "weighted"])
def test_search_ledger_charges_what_the_caching_engines_computed(strategy, policy_engine, prm_engine):
    """On fresh caching engines the ledger's prefix-caching charges equal the prompt tokens the
    policy ran and the tokens the step checker read, and the search finds what it finds
    without the caches."""
    from nexus_ray.engines.hf import HFRewardEngine
    from nexus_ray.search import registry
    from nexus_ray.search.base import SearchContext
    from nexus_ray.zoo.registry import resolve

    cached, cached_prm = _cached_engine(), HFRewardEngine(resolve("arith-prm"), cache_tokens=65536)
    problem = "21-95*9-52+5*3"
    plain = SearchContext.for_problem(policy_engine, prm_engine, ARITH, problem)
    ctx = SearchContext.for_problem(cached, cached_prm, ARITH, problem)
    assert ctx.prefix_caching and not plain.prefix_caching
    assert ctx.new_ledger().prm_prefix_caching and not plain.new_ledger().prm_prefix_caching
    a = asyncio.run(registry.run(strategy, plain, 8))
    b = asyncio.run(registry.run(strategy, ctx, 8))
    assert b.ledger.policy_prefill_tokens == cached.prefill_tokens
    assert b.ledger.prm_tokens == cached_prm.scored_tokens < a.ledger.prm_tokens
    if strategy != "weighted":  # one generate call: nothing to reuse
        assert b.ledger.policy_prefill_tokens < a.ledger.policy_prefill_tokens
    assert (b.solution, b.ledger.policy_generated_tokens) == (a.solution, a.ledger.policy_generated_tokens)


def test_replay_prices_a_pool_as_the_caching_engines_charge_live(tmp_path):
    """A pool recorded on caching engines keeps each sample's scored steps and the engines'
    caching modes, so replaying a PRM-scored plan charges what scoring the same samples live
    charges: a step read once per request, identical samples scored once."""
    from nexus_ray.engines.hf import HFRewardEngine
    from nexus_ray.planner.replay import Recorded, load_pools
    from nexus_ray.planner.sampling import ReplaySampler, record_pool
    from nexus_ray.search.base import SearchContext
    from nexus_ray.search.full_samples import score, score_requests
    from nexus_ray.zoo.registry import resolve

    prm = HFRewardEngine(resolve("arith-prm"), cache_tokens=65536)
    problem = "3+4*5-6"
    ctx = SearchContext.for_problem(_cached_engine(), prm, ARITH, problem, None, 0)
    pool = asyncio.run(record_pool(ctx, problem, m=8))
    live = ctx.new_ledger()
    asyncio.run(score(ctx, live, score_requests(ctx, [s.text for s in pool.samples]), "test"))
    modes = ctx.new_ledger()
    rec = Recorded(pool, "17", 2, 1, 1, "number", modes.prefix_caching, modes.prm_prefix_caching)
    (tmp_path / "pools.jsonl").write_text(json.dumps(rec.to_dict()) + "\n")
    [back] = load_pools(tmp_path / "pools.jsonl")
    replayed, sampler = back.ledger(), ReplaySampler(back.pool)
    asyncio.run(sampler.score(asyncio.run(sampler.sample(8, replayed)), replayed))
    assert back.prm_prefix_caching and back.prefix_caching
    assert replayed.prm_tokens == live.prm_tokens < sum(s.prm_tokens for s in pool.samples)
