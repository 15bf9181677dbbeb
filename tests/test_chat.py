"""Bring your own models: chat-templated policies, Qwen-style PRMs and free-form math, on the
transformers engine, with model directories nexus_ray has never seen (tests/unseen_models.py)."""

from __future__ import annotations

import asyncio
import json
import random

import pytest

from nexus_ray.config import EngineConfig, RewardConfig, TaskConfig
from nexus_ray.engines import build_policy_engine, build_reward_engine
from nexus_ray.engines.base import ScoreRequest
from nexus_ray.engines.prm_format import PrmFormatError
from nexus_ray.engines.tokens import prompt_ids
from nexus_ray.search import registry
from nexus_ray.search.base import SearchContext
from nexus_ray.tasks import datasets, mathchat
from nexus_ray.tasks.chat import ChatTemplateError
from nexus_ray.tasks.format import chat_math, task_format
from nexus_ray.tasks.grading import grade
from nexus_ray.training.chat_prm import corrupt
from tests.unseen_models import build_policy, build_prm


@pytest.fixture(scope="module")
def unseen(tmp_path_factory):
    root = tmp_path_factory.mktemp("unseen")
    policy = build_policy(root / "qwen2-policy")
    return {
        "policy": policy,
        "llama": build_policy(root / "llama-policy", arch="llama", template_in_config=True, seed=3),
        "llama3": build_policy(root / "llama3-policy", arch="llama", bos=True, seed=5),
        "prm": build_prm(root / "prm", policy),
        "prm-no-tag": build_prm(root / "prm-no-tag", policy, step_tag=False),
        "prm-3-labels": build_prm(root / "prm-3", policy, num_labels=3),
    }


def test_every_gold_solution_is_graded_right_and_labelled_right_at_every_step():
    rng = random.Random(0)
    for level in mathchat.WORD_LEVELS:
        for _ in range(40):
            p = mathchat.generate(level, rng)
            assert grade(p.solution, p.answer, "math"), (p.problem, p.solution)
            assert mathchat.step_labels(p, p.solution) == [True] * len(p.steps)
            bad = corrupt(p, rng)
            first = next(i for i, (a, b) in enumerate(zip(bad, p.steps)) if a != b)
            labels = mathchat.step_labels(p, mathchat.STEP_DELIMITER.join(bad))
            assert labels == [True] * first + [False] * (len(bad) - first)


def test_word_problems_need_math_verify_fractions_and_negatives():
    answers = [p.answer for p in mathchat.generate_set(500, 7)]
    assert any(a.startswith("\\frac") for a in answers) and any(a.startswith("-") for a in answers)
    assert grade("so \\boxed{\\frac{6}{4}}", "\\frac{3}{2}", "math")
    assert not grade("the answer is 3/2 (no box)", "\\frac{3}{2}", "math")  # the last \boxed{} or nothing


def test_the_chat_sets_ship_in_math500_schema_and_rebuild_identically():
    for name in datasets.CHAT_SETS:
        rows = [json.loads(line) for line in (datasets.DATA_DIR / f"{name}.jsonl").read_text().splitlines()]
        rebuilt = datasets.builtin_chat_problems(name)
        assert [r["problem"] for r in rows] == [p.problem for p in rebuilt]
        assert [(r["answer"], r["level"]) for r in rows] == [(p.answer, p.level) for p in rebuilt]
        assert {"problem", "solution", "answer", "subject", "level", "unique_id"} <= rows[0].keys()
    test = {p.problem for p in datasets.builtin_chat_problems("chat-test")}
    assert len(test) == 500


def test_a_dataset_without_problem_or_answer_names_the_file_and_the_field(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"question": "1+1?", "answer": "2"}\n')
    with pytest.raises(datasets.DatasetError, match=r"mine.jsonl:1: .*'problem'"):
        datasets.load(str(path))
    path.write_text('{"problem": "1+1?", "solution": "2"}\n')
    with pytest.raises(datasets.DatasetError, match=r"mine.jsonl:1: .*'answer'"):
        datasets.load(str(path))


@pytest.mark.parametrize("which", ["policy", "llama"])
def test_chat_math_prompts_with_the_policys_own_template_from_either_file(unseen, which):
    fmt = chat_math(unseen[which])
    prompt = fmt.prompt((("system", "Be brief."), ("user", "What is 1/2 of 8?")))
    assert (
        prompt
        == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 1/2 of 8?<|im_end|>\n"
        + ("<|im_start|>assistant\n")
    )
    assert fmt.prompt("What is 2?").startswith(f"<|im_start|>system\n{mathchat.SYSTEM_PROMPT}<|im_end|>")
    assert (
        fmt.steps("a\n\nb\n\n\\boxed{3}") == ("a", "b", "\\boxed{3}") and fmt.answer("x \\boxed{-3}") == "-3"
    )


def test_a_policy_without_a_chat_template_is_a_start_up_error_naming_it():
    from nexus_ray.zoo.registry import resolve

    with pytest.raises(ChatTemplateError, match=r"arith-policy: the tokenizer has no chat template"):
        task_format(TaskConfig(format="chat-math"), resolve("arith-policy"))


def test_the_qwen_tokenizer_splits_numbers_into_digits(unseen):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(unseen["policy"])
    assert len(tok("12345", add_special_tokens=False).input_ids) == 5


@pytest.mark.parametrize(
    "which, field",
    [("prm-no-tag", "no single token '<extra_0>'"), ("prm-3-labels", "num_labels is 3")],
)
def test_a_prm_that_does_not_fit_its_format_fails_at_start_up(unseen, which, field):
    with pytest.raises(PrmFormatError, match=field) as err:
        build_reward_engine(RewardConfig(model=str(unseen[which]), format="qwen-prm"))
    assert str(unseen[which]) in str(err.value)


def test_a_step_pooled_prm_named_in_token_format_is_refused(unseen):
    with pytest.raises(PrmFormatError, match="set prm.format: qwen-prm"):
        build_reward_engine(RewardConfig(model=str(unseen["prm"]), format="token"))


def test_format_auto_reads_a_step_pooled_prm_as_qwen_prm(unseen):
    assert RewardConfig(model=str(unseen["prm"])).format == "auto"
    assert build_reward_engine(RewardConfig(model=str(unseen["prm"]))).encoder.format == "qwen-prm"


def test_the_qwen_prm_reads_one_score_per_step_at_its_tags(unseen):
    prm = build_reward_engine(RewardConfig(model=str(unseen["prm"]), format="qwen-prm"))
    conversation = (("system", "ignored: the PRM has its own"), ("user", "What is 3/4 of 12 minus 5?"))
    steps = ("12 * 3/4 = 9", "9 - 5 = 4", "The answer is \\boxed{4}.")
    [full, short] = prm.score_sync(
        [ScoreRequest("", steps, conversation), ScoreRequest("", steps[:1], conversation)]
    )
    assert len(full.scores) == 3 and all(0 < s < 1 for s in full.scores)
    assert short.scores[0] == pytest.approx(full.scores[0], abs=1e-5)  # causal: later steps do not matter
    text = prm.encoder.tokenizer.decode(prm.encoder.encode(ScoreRequest("", steps, conversation))[0])
    assert "ignored" not in text and mathchat.SYSTEM_PROMPT in text and text.count("<extra_0>") == 3
    assert full.tokens == len(
        prm.encoder.encode(ScoreRequest("", steps, conversation))[0]
    )  # the template is charged


def test_a_template_that_writes_bos_gets_exactly_one(unseen):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(unseen["llama3"])
    prompt = chat_math(unseen["llama3"]).prompt("What is 2+2?")
    assert tok(prompt).input_ids[:2] == [tok.bos_token_id] * 2  # the hazard: a second BOS
    ids = prompt_ids(tok, prompt)
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert build_policy_engine(EngineConfig(model=str(unseen["llama3"]))).count_tokens(prompt) == len(ids)
    assert prompt_ids(tok, "What is 2+2?")[0] == tok.bos_token_id  # untemplated text still gets one


@pytest.mark.parametrize("which", ["policy", "llama", "llama3"])
def test_a_strategy_runs_end_to_end_on_unseen_chat_models(unseen, which):
    policy = build_policy_engine(EngineConfig(model=str(unseen[which])))
    prm = build_reward_engine(RewardConfig(model=str(unseen["prm"]), format="qwen-prm"))
    fmt = chat_math(unseen[which])
    ctx = SearchContext.for_problem(policy, prm, fmt, "What is 3/4 of 12 minus 5?", seed=0)
    result = asyncio.run(registry.run("weighted", ctx, 4, {"max_tokens": 24}))
    assert len(result.candidates) == 4 and result.ledger.prm_tokens > 0
    assert ctx.messages == (("system", mathchat.SYSTEM_PROMPT), ("user", "What is 3/4 of 12 minus 5?"))
    assert result.ledger.policy_prefill_tokens == policy.count_tokens(ctx.prompt)
