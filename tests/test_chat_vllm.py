"""Unseen chat-format model directories on vLLM's CPU build agree with the transformers engine:
identical greedy tokens and token counts for a chat-templated Qwen2 policy and a Llama policy
whose template writes BOS, Qwen-format PRM
scores within 1e-3 (vLLM's native step pooler against the project's transformers class)."""

from __future__ import annotations

import pytest

from nexus_ray.config import CPU_KV_CACHE_BYTES, EngineConfig, RewardConfig
from nexus_ray.engines import build_policy_engine, build_reward_engine
from nexus_ray.engines.base import GenerationParams, ScoreRequest
from nexus_ray.tasks.format import chat_math
from tests.unseen_models import build_policy, build_prm

pytestmark = pytest.mark.vllm

VLLM = dict(
    engine="vllm",
    dtype="float32",
    max_model_len=512,
    kv_cache_memory_bytes=CPU_KV_CACHE_BYTES,
    enforce_eager=True,
)
QUESTIONS = ["What is 3/4 of 12 minus 5?", "Start with 7. Add 5, then take 1/3 of it. What is the result?"]


def assert_scores_alike(prm: dict, requests: list[ScoreRequest]) -> None:
    """The PRM of ``prm`` (RewardConfig fields) on transformers and on vLLM: equal token
    counts, step scores within 1e-3."""
    reference = build_reward_engine(RewardConfig(**prm)).score_sync(requests)
    engine = build_reward_engine(RewardConfig(**prm, **VLLM))
    try:
        ours = engine.score_sync(requests)
    finally:
        engine.shutdown()
    for v, h in zip(ours, reference):
        assert v.tokens == h.tokens and len(v.scores) == len(h.scores)
        assert max(abs(a - b) for a, b in zip(v.scores, h.scores)) < 1e-3


@pytest.fixture(scope="module")
def unseen(tmp_path_factory):
    root = tmp_path_factory.mktemp("unseen-vllm")
    policy = build_policy(root / "policy", seed=11)
    return {
        "qwen2": policy,
        "llama3": build_policy(root / "llama3", arch="llama", bos=True, seed=13),
        "prm": build_prm(root / "prm", policy, seed=12),
    }


@pytest.mark.parametrize("which", ["qwen2", "llama3"])
def test_greedy_on_a_chat_templated_policy_matches_transformers(unseen, which):
    policy_dir = unseen[which]
    prompts = [chat_math(policy_dir).prompt(q) for q in QUESTIONS]
    params = GenerationParams(temperature=0.0, max_tokens=32)
    reference = build_policy_engine(EngineConfig(model=str(policy_dir))).generate_sync(prompts, params)
    engine = build_policy_engine(EngineConfig(model=str(policy_dir), **VLLM))
    try:
        ours = engine.generate_sync(prompts, params)
        assert engine.count_tokens(prompts[0]) == reference[0].prompt_tokens
    finally:
        engine.shutdown()
    for v, h in zip(ours, reference):
        assert v.prompt_tokens == h.prompt_tokens
        assert v.completions[0].token_ids == h.completions[0].token_ids


def test_qwen_prm_scores_match_transformers(unseen):
    prm_dir = unseen["prm"]
    requests = [
        ScoreRequest(
            "", ("12 * 3/4 = 9", "9 - 5 = 4", "The answer is \\boxed{4}."), (("user", QUESTIONS[0]),)
        ),
        ScoreRequest("", ("7 + 5 = 12",), (("system", "x"), ("user", QUESTIONS[1]))),
    ]
    assert_scores_alike(dict(model=str(prm_dir), format="qwen-prm"), requests)


def test_the_zoo_chat_policy_decodes_identically_on_both_engines():
    from nexus_ray.tasks import datasets
    from nexus_ray.zoo.registry import resolve

    fmt = chat_math(resolve("chat-policy"))
    prompts = [fmt.prompt(e.problem) for e in datasets.load("chat-test")[::50]]
    params = GenerationParams(temperature=0.0, max_tokens=200)
    reference = build_policy_engine(EngineConfig(model="chat-policy")).generate_sync(prompts, params)
    engine = build_policy_engine(EngineConfig(model="chat-policy", **VLLM))
    try:
        ours = engine.generate_sync(prompts, params)
    finally:
        engine.shutdown()
    for v, h in zip(ours, reference):
        assert v.prompt_tokens == h.prompt_tokens
        assert v.completions[0].text == h.completions[0].text
        assert v.completions[0].token_ids == h.completions[0].token_ids


def test_the_zoo_chat_prm_scores_alike_on_both_engines():
    from nexus_ray.tasks import datasets

    problems = datasets.builtin_chat_problems("chat-test")[::60]
    requests = [ScoreRequest("", p.steps, (("user", p.problem),)) for p in problems]
    assert_scores_alike(dict(model="chat-prm", format="qwen-prm"), requests)
