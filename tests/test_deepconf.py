"""DeepConf offline and online: the confidence maths, exact cut-offs and charges on the simulated
engines, and both strategies on the zoo's transformers engine."""

import asyncio
from dataclasses import replace

import pytest
from sim import SURE, UNSURE, SimPolicy

from nexus_ray.engines.base import ConfidenceStop, GenerationParams, token_confidence
from nexus_ray.planner.options import PlanOption
from nexus_ray.planner.sampling import EngineSampler
from nexus_ray.planner.spend import strategy_ceiling
from nexus_ray.search import registry
from nexus_ray.search.base import SearchContext
from nexus_ray.search.confidence import (
    group_confidences,
    leader_share,
    most_confident,
    stop_threshold,
    trace_confidence,
)
from nexus_ray.search.ledger import ComputeLedger
from nexus_ray.tasks import arith, datasets
from nexus_ray.tasks.format import ARITH

PROBLEMS = [p for p in arith.generate_set(60, seed=4) if p.level >= 3]


class Recording:
    """An engine that keeps every call's parameters and results, to check what was charged."""

    def __init__(self, engine):
        self.engine = engine
        self.model_name, self.num_parameters = engine.model_name, engine.num_parameters
        self.calls: list[tuple[GenerationParams, list]] = []

    def count_tokens(self, text):
        return self.engine.count_tokens(text)

    async def generate(self, prompts, params):
        results = await self.engine.generate(prompts, params)
        self.calls.append((params, results))
        return results

    def completions(self, stopped: bool | None = None):
        """Every completion, or those drawn with (True) or without (False) a confidence stop."""
        return [
            c
            for params, results in self.calls
            if stopped is None or (params.confidence_stop is not None) == stopped
            for r in results
            for c in r.completions
        ]


def lowest(c, window=16):
    return trace_confidence([token_confidence(t) for t in c.top_logprobs], "lowest", window, window)


def run(name, prompt, policy, generations=16, seed=0, overrides=None):
    ctx = SearchContext(policy, None, prompt, ARITH, None, seed)
    return asyncio.run(registry.run(name, ctx, generations, overrides))


def cut_length(confidences, stop: ConfidenceStop, checked: int) -> int | None:
    """Where the stop ends a trace with these token confidences (its first ``checked`` tokens
    are checked), from the strategies' own group confidences."""
    groups = group_confidences(confidences, stop.window)
    return next(
        (j + stop.window for j in range(checked - stop.window + 1) if groups[j] < stop.threshold), None
    )


# --- the maths, on hand-made numbers --------------------------------------------------------


def test_token_and_group_confidences():
    assert token_confidence((-1.0, -2.0, -3.0)) == 2.0
    assert group_confidences([3, 3, 1, 1], 2) == [3, 2, 1]
    assert group_confidences([2, 4], 3) == [3]  # shorter than a window: one group
    assert group_confidences([], 3) == []


def test_trace_confidence_variants():
    confidences = [3, 3, 1, 1, 3, 3]
    assert trace_confidence(confidences, "lowest", 2, 2) == 1
    assert trace_confidence(confidences, "lowest", 3, 2) == pytest.approx(5 / 3)
    assert trace_confidence(confidences, "tail", 2, 2) == 3
    assert trace_confidence(confidences, "tail", 2, 4) == 2
    assert trace_confidence(confidences, "mean", 2, 2) == pytest.approx(14 / 6)
    assert trace_confidence([], "lowest", 2, 2) == 0.0


def test_keep_vote_and_threshold():
    assert most_confident([0.5, 2.0, 1.0, 2.0], 0.5) == [1, 3]
    assert most_confident([0.5, 2.0, 1.0, 2.0], 0.1) == [1]  # at least one; ties to the earlier
    assert most_confident([0.5, 2.0, 1.0], 0.9) == [0, 1, 2]
    assert stop_threshold([1, 2, 3, 4, 5], 0.9) == pytest.approx(1.4)  # the 10th percentile
    assert stop_threshold([1, 2, 3, 4, 5], 0.1) == pytest.approx(4.6)  # the 90th
    assert leader_share(["a", "b", None, "a"], [1, 2, 5, 1]) == 0.5
    assert leader_share([None], [1]) == 0.0


def test_the_stop_waits_for_a_whole_window():
    stop = ConfidenceStop(threshold=2.0, window=3)
    assert not stop.stops([1.0, 1.0])
    assert not stop.stops([3.0, 3.0, 1.0])  # 7/3
    assert stop.stops([3.0, 3.0, 1.0, 1.0])  # 5/3
    with pytest.raises(ValueError):
        ConfidenceStop(1.0, window=0)


# --- simulated engines: exact cut-offs and charges ------------------------------------------


def test_sim_cuts_exactly_where_the_window_falls_below():
    prompt = ARITH.prompt(PROBLEMS[0].expression)
    stop = ConfidenceStop(threshold=2.0, window=4, top_k=2)
    whole = asyncio.run(SimPolicy(0.2).generate([prompt], GenerationParams(n=8, seed=1, top_logprobs=2)))
    cut = asyncio.run(SimPolicy(0.2).generate([prompt], GenerationParams(n=8, seed=1, confidence_stop=stop)))
    kinds = set()
    for w, c in zip(whole[0].completions, cut[0].completions):
        confidences = [token_confidence(t) for t in w.top_logprobs]
        assert set(confidences) <= {SURE, UNSURE}
        length = cut_length(confidences, stop, w.num_tokens - 1)
        if length is None:
            assert c == replace(w, top_logprobs=None)
        else:  # three wrong tokens in a window of four: (3 x 1 + 3) / 4 < 2
            assert c.finish_reason == "confidence" and c.num_tokens == length
            assert c.text == w.text[:length] and confidences[length - 3 : length] == [UNSURE] * 3
        kinds.add(length is None)
    assert kinds == {True, False}


def test_online_charges_cut_traces_only_their_tokens():
    policy = Recording(SimPolicy(0.4))
    prompt = ARITH.prompt(PROBLEMS[1].expression)
    result = run("deepconf_online", prompt, policy, 16, overrides={"consensus": 1.0})
    stopped = policy.completions(stopped=True)
    assert any(c.finish_reason == "confidence" for c in stopped)
    assert result.ledger.policy_generated_tokens == sum(c.num_tokens for c in policy.completions())
    assert result.ledger.generations == 16 == len(policy.completions())
    # each cut trace is exactly the uncut trace of its seed, up to where the bar cut it
    for params, [r] in policy.calls[1:]:
        again = asyncio.run(SimPolicy(0.4).generate([prompt], GenerationParams(n=params.n, seed=params.seed)))
        for c, w in zip(r.completions, again[0].completions):
            assert w.text.startswith(c.text)
            assert (c.finish_reason == "confidence") == (c.num_tokens < w.num_tokens)
    voters = {c.text for c in result.candidates}
    assert not voters & {c.text for c in stopped if c.finish_reason == "confidence"}


def test_online_bar_is_the_warmup_percentile():
    policy = Recording(SimPolicy(0.4))
    overrides = {"keep": 0.5, "consensus": 1.0}
    result = run("deepconf_online", ARITH.prompt(PROBLEMS[2].expression), policy, 16, overrides=overrides)
    warm = policy.completions(stopped=False)
    assert len(warm) == 4  # max(4, 16 // 4)
    bar = stop_threshold([lowest(c) for c in warm], 0.5)
    assert len(policy.calls) > 1 and policy.calls[1][0].confidence_stop.threshold == bar
    # the voters: every trace, warm-up or later, whose lowest group reaches the bar
    assert [c.text for c in result.candidates] == [c.text for c in policy.completions() if lowest(c) >= bar]
    assert result.ledger.generations == len(policy.completions())


def test_consensus_ends_sampling_early():
    policy = Recording(SimPolicy(0.0))
    result = run("deepconf_online", ARITH.prompt(PROBLEMS[0].expression), policy, 32)
    assert len(policy.calls) == 1 and result.ledger.generations == 8  # the warm-up agreed
    assert result.answer == PROBLEMS[0].answer
    noisy = Recording(SimPolicy(0.4))
    run("deepconf_online", ARITH.prompt(PROBLEMS[0].expression), noisy, 32, overrides={"consensus": 1.0})
    assert noisy.calls[-1][0].n == 4 and len(noisy.completions()) == 32


def test_offline_keeps_the_most_confident_fraction():
    policy = Recording(SimPolicy(0.4))
    result = run("deepconf", ARITH.prompt(PROBLEMS[3].expression), policy, 10, overrides={"keep": 0.3})
    [params] = [p for p, _ in policy.calls]
    assert params.top_logprobs == 5 and params.confidence_stop is None
    drawn = policy.completions()
    confidences = [lowest(c) for c in drawn]
    best = sorted(sorted(range(10), key=lambda i: (-confidences[i], i))[:3])
    assert [c.text for c in result.candidates] == [drawn[i].text for i in best]
    assert [c.score for c in result.candidates] == [confidences[i] for i in best]
    assert result.ledger.policy_generated_tokens == sum(c.num_tokens for c in drawn)


def test_confidence_beats_the_plain_vote_when_errors_are_unsure():
    """The simulated policy is unsure exactly where it errs, the signal DeepConf reads."""

    def solved_and_spent(name):
        runs = [
            run(name, ARITH.prompt(p.expression), SimPolicy(0.35), 16, seed=i) for i, p in enumerate(PROBLEMS)
        ]
        solved = sum(r.answer == p.answer for r, p in zip(runs, PROBLEMS))
        return solved, sum(r.ledger.policy_generated_tokens for r in runs)

    majority, offline, online = (solved_and_spent(n) for n in ("majority", "deepconf", "deepconf_online"))
    assert offline[1] == majority[1] and offline[0] >= majority[0] + 5  # the same traces, a better vote
    assert online[0] > majority[0] and online[1] < majority[1]


def test_budget_maps_to_traces_and_warmup():
    _, offline = registry.build_params("deepconf", 16)
    _, online = registry.build_params("deepconf_online", 16)
    assert (offline.n, online.n, online.warmup) == (16, 16, 4)
    assert registry.build_params("deepconf_online", 64)[1].warmup == 16
    assert registry.build_params("deepconf_online", 3)[1].warmup == 3
    with pytest.raises(ValueError, match="warmup"):
        registry.build_params("deepconf_online", None, {"n": 2, "warmup": 3})
    assert not registry.get("deepconf")[0].needs_prm and not registry.get("deepconf_online")[0].needs_prm


def test_a_plan_can_run_deepconf_online():
    option = PlanOption(strategy="deepconf_online", n=16)
    assert option.label == "deepconf_online@16" and not option.sampled
    ctx = SearchContext(SimPolicy(0.3), None, ARITH.prompt(PROBLEMS[0].expression), ARITH, None, 0)
    assert strategy_ceiling(ctx, "deepconf_online", 16) == 16 * (ctx.policy.count_tokens(ctx.prompt) + 256)
    ledger = ComputeLedger(ctx.policy.num_parameters)
    done = asyncio.run(EngineSampler(ctx).run(option, ledger, None))
    assert done.answer is not None and 0 < ledger.generations <= 16


# --- the zoo's transformers engine ----------------------------------------------------------

ZOO_PROMPTS = [ARITH.prompt(e.problem) for e in datasets.load("arith-test")[::100][:3]]


def test_zoo_top_logprobs_bound_the_sampled_token(policy_engine):
    params = GenerationParams(n=3, seed=0, max_tokens=80, logprobs=True, top_logprobs=5)
    for r in policy_engine.generate_sync(ZOO_PROMPTS, params):
        for c in r.completions:
            assert len(c.top_logprobs) == len(c.logprobs) == c.num_tokens
            for top, sampled in zip(c.top_logprobs, c.logprobs):
                assert len(top) == 5 and list(top) == sorted(top, reverse=True)
                assert top[0] >= sampled - 1e-6 and top[-1] <= 0
    plain = policy_engine.generate_sync(ZOO_PROMPTS[:1], GenerationParams(n=2, seed=0, max_tokens=80))
    assert all(c.top_logprobs is None for c in plain[0].completions)


def test_zoo_confidence_stop_cuts_the_same_sample(policy_engine):
    window = 8
    cut_any = False
    for prompt in ZOO_PROMPTS:  # one prompt a call: the same batch whole and cut, so the same floats
        [r] = policy_engine.generate_sync([prompt], GenerationParams(n=4, seed=3, top_logprobs=5))
        for j, w in enumerate(r.completions):
            if w.num_tokens < window + 2:  # no window before the last token's to cut at
                continue
            confidences = [token_confidence(t) for t in w.top_logprobs]
            checked = group_confidences(confidences, window)[: w.num_tokens - window]  # not the EOS's window
            low = min(checked)
            above = min(g for g in checked if g > low)
            stop = ConfidenceStop((low + above) / 2, window, 5)
            params = GenerationParams(n=4, seed=3, top_logprobs=5, confidence_stop=stop)
            [again] = policy_engine.generate_sync([prompt], params)
            c = again.completions[j]
            length = cut_length(confidences, stop, w.num_tokens - 1)
            assert c.finish_reason == "confidence" and c.num_tokens == length < w.num_tokens
            assert c.token_ids == w.token_ids[:length] and c.top_logprobs == w.top_logprobs[:length]
            assert w.text.startswith(c.text)
            cut_any = True
    assert cut_any


@pytest.mark.parametrize("name", ["deepconf", "deepconf_online"])
def test_zoo_deepconf_answers(policy_engine, name):
    for prompt in ZOO_PROMPTS:
        policy = Recording(policy_engine)
        result = run(name, prompt, policy, 8, overrides={"window": 8})
        assert result.answer is not None and result.candidates
        assert result.ledger.policy_generated_tokens == sum(c.num_tokens for c in policy.completions())
        assert result.ledger.generations == len(policy.completions()) <= 8
