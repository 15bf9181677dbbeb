"""The GPU configs' path on this machine: deployments/local-cpu-chat-hf.yaml with only the model
paths changed, serving model directories nexus_ray has never seen, driven by the official
``openai`` client over real HTTP."""

from __future__ import annotations

import os

import openai
import pytest
from ports import start_serve, stop_serve
from ray import serve
from transformers import AutoTokenizer

from nexus_ray.config import load_service_config
from nexus_ray.serving import admission
from nexus_ray.serving.app import build_app
from nexus_ray.serving.local import wait_healthy
from nexus_ray.tasks.grading import last_boxed
from nexus_ray.zoo.registry import resolve
from tests.unseen_models import build_policy, build_prm

KEY = "chat-test-key"


def deploy(config_path: str, policy, prm, namespace: str):
    """Start a local cluster and serve ``config_path`` with only the two model paths replaced;
    the zoo chat pair with its built-in plan table beside it at /zoo (smaller CPU shares, same
    config otherwise), for the OpenAI API's finer points."""
    os.environ["NEXUS_API_KEYS"] = KEY  # the config names this variable, as gpu-single.yaml does
    url = start_serve(namespace)
    config, _ = load_service_config(config_path)
    args = config.model_dump()
    args["policy"]["model"], args["prm"]["model"] = str(policy), str(prm)
    zoo = config.model_dump() | {"planner_name": "planner-zoo", "num_cpus": 0.1, "model_id": "nexus-chat-zoo"}
    zoo["policy"]["model"], zoo["prm"]["model"] = "chat-policy", "chat-prm"
    zoo["planner"] |= {"table": "chat-zoo", "mean_budget": 150.0}
    zoo["policy_worker"] |= {"num_cpus": 0.1}
    zoo["prm_worker"] |= {"num_cpus": 0.1}
    for name in (args["planner_name"], "planner-zoo"):
        admission.clear_state(name)
    serve.run(build_app(args), name="nexus", route_prefix="/", blocking=False)
    serve.run(build_app(zoo), name="zoo", route_prefix="/zoo", blocking=False)
    wait_healthy(url, 300)
    wait_healthy(url + "/zoo", 300)
    return url, config.model_id


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    policy = build_policy(root / "my-qwen2-policy", seed=5)
    prm = build_prm(root / "my-prm", policy)
    url, model_id = deploy("deployments/local-cpu-chat-hf.yaml", policy, prm, "chat")
    yield openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0), model_id, url
    stop_serve()


def test_a_free_form_question_is_answered_through_the_openai_client(service):
    client, model_id, _ = service
    reply = client.chat.completions.create(
        model=model_id,
        messages=[
            {"role": "system", "content": "Reason briefly."},
            {"role": "user", "content": "What is 3/4 of 12 minus 5?"},
        ],
        extra_body={"nexus": {"strategy": "weighted", "budget": 2}},
    )
    assert reply.choices[0].message.role == "assistant" and reply.choices[0].message.content
    nexus = reply.model_extra["nexus"]
    assert nexus["strategy"] == "weighted" and nexus["budget"] == 2
    assert nexus["ledger"]["prm_tokens"] > 0 and reply.usage.prompt_tokens > 0


def test_any_non_empty_question_is_accepted_and_an_empty_one_is_a_422(service):
    client, model_id, _ = service
    for question in ["¿Cuánto es la mitad de 8?", "Prove that 1 = 1."]:
        reply = client.chat.completions.create(
            model=model_id,
            messages=[{"role": "user", "content": question}],
            extra_body={"nexus": {"strategy": "greedy"}},
        )
        assert reply.choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.UnprocessableEntityError, match="empty"):
        client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "   "}])


def test_the_api_key_is_required(service):
    client, model_id, _ = service
    anonymous = openai.OpenAI(base_url=str(client.base_url), api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        anonymous.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "1+1?"}])


# The OpenAI API's finer points, on the zoo chat pair with its built-in plan table (at /zoo).

HARD = "Start with 17. Subtract 3/4 of 28, then multiply by -3. What is the result?"


@pytest.fixture(scope="module")
def zoo(service):
    _, _, url = service
    client = openai.OpenAI(base_url=f"{url}/zoo/v1", api_key=KEY, max_retries=0)
    return client, AutoTokenizer.from_pretrained(resolve("chat-policy"))


def ask(client, question: str = HARD, **kwargs):
    return client.chat.completions.create(
        model="nexus-chat-zoo", messages=[{"role": "user", "content": question}], **kwargs
    )


def test_streaming_through_the_official_client_matches_the_plain_response(zoo):
    client, _ = zoo
    options = {"nexus": {"strategy": "weighted", "budget": 4, "seed": 3}}
    plain = ask(client, extra_body=options)
    chunks = list(ask(client, stream=True, stream_options={"include_usage": True}, extra_body=options))
    first, *middle, last_choice, usage = chunks
    assert first.choices[0].delta.role == "assistant" and first.model_extra["nexus"]["plan"]["budget"] == 4
    assert len(middle) >= 1  # the text came in steps
    text = "".join(c.choices[0].delta.content or "" for c in [first, *middle])
    assert text == plain.choices[0].message.content
    assert last_choice.choices[0].finish_reason == plain.choices[0].finish_reason
    assert last_choice.model_extra["nexus"]["answer"] == plain.model_extra["nexus"]["answer"]
    assert usage.choices == [] and usage.usage.completion_tokens == plain.usage.completion_tokens > 0
    assert len({c.id for c in chunks}) == 1


def test_n_returns_the_best_distinct_answers_best_first(zoo):
    client, _ = zoo
    options = {"nexus": {"strategy": "weighted", "budget": 8, "seed": 1}}
    one = ask(client, extra_body=options)
    many = ask(client, n=4, extra_body=options)
    answers = [last_boxed(c.message.content) for c in many.choices]
    assert 2 <= len(many.choices) <= 4 and len(set(answers)) == len(answers)
    assert many.choices[0].message.content == one.choices[0].message.content
    assert [c.index for c in many.choices] == list(range(len(many.choices)))


def test_max_completion_tokens_caps_every_solution_of_every_strategy(zoo):
    client, tok = zoo
    for strategy, budget in (("greedy", None), ("weighted", 4), ("beam", 4)):
        reply = ask(
            client,
            max_completion_tokens=5,
            extra_body={"nexus": {"strategy": strategy, "budget": budget, "return_candidates": True}},
        )
        texts = [reply.choices[0].message.content] + [
            c["text"] for c in reply.model_extra["nexus"]["candidates"]
        ]
        assert all(len(tok(t, add_special_tokens=False).input_ids) <= 5 for t in texts), (strategy, texts)
        assert reply.choices[0].finish_reason == "length"
    assert (
        ask(client, max_tokens=400, extra_body={"nexus": {"strategy": "greedy"}}).choices[0].finish_reason
        == "stop"
    )


def test_reasoning_effort_scales_the_plan_and_nexus_budget_overrides_it(zoo):
    client, _ = zoo
    none = ask(client, reasoning_effort="none").model_extra["nexus"]
    assert none["strategy"] == "greedy" and none["ledger"]["generations"] == 1
    low, high = (ask(client, reasoning_effort=e).model_extra["nexus"] for e in ("low", "high"))
    assert low["plan"]["source"] == high["plan"]["source"] == "table"
    assert high["budget"] > low["budget"]  # the largest plan the allocation may run, per effort
    pinned = ask(client, reasoning_effort="high", extra_body={"nexus": {"budget": 2}}).model_extra["nexus"]
    assert pinned["strategy"] == "weighted" and pinned["budget"] == 2


def test_usage_counts_every_generated_token_and_the_reasoning_beyond_the_answer(zoo):
    client, tok = zoo
    greedy = ask(client, extra_body={"nexus": {"strategy": "greedy"}})
    tokens = len(tok(greedy.choices[0].message.content, add_special_tokens=False).input_ids)
    assert greedy.choices[0].finish_reason == "stop"
    assert greedy.usage.completion_tokens == tokens + 1  # and its end-of-turn token
    assert greedy.usage.completion_tokens_details.reasoning_tokens == 0
    searched = ask(client, extra_body={"nexus": {"strategy": "weighted", "budget": 4}})
    ledger = searched.model_extra["nexus"]["ledger"]
    returned = len(tok(searched.choices[0].message.content, add_special_tokens=False).input_ids)
    assert searched.usage.completion_tokens == ledger["policy_generated_tokens"]
    end = searched.choices[0].finish_reason == "stop"  # the returned sample's end-of-turn token
    reasoning = ledger["policy_generated_tokens"] - returned - end
    assert searched.usage.completion_tokens_details.reasoning_tokens == reasoning > 0
    assert searched.usage.total_tokens == searched.usage.prompt_tokens + searched.usage.completion_tokens


def test_text_parts_are_read_and_what_is_not_supported_is_named(zoo):
    client, _ = zoo
    parts = [{"type": "text", "text": "What is 3/4 of 12"}, {"type": "text", "text": "minus 5?"}]
    reply = client.chat.completions.create(
        model="nexus-chat-zoo",
        messages=[{"role": "user", "content": parts}],
        temperature=0.3,
        extra_body={"nexus": {"strategy": "greedy"}},
    )
    assert reply.model_extra["nexus"]["not_applied"] == ["temperature"]
    assert reply.model_extra["nexus"]["problem"] == "What is 3/4 of 12\nminus 5?"
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    for kwargs, named in (
        ({"tools": [tool]}, "tools"),
        ({"logprobs": True}, "logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"n": -1}, "n"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"extra_body": {"n": "x"}}, "n"),
        ({"extra_body": {"frobnicate": 1}}, "frobnicate"),
    ):
        with pytest.raises(openai.UnprocessableEntityError, match=named):
            ask(client, **kwargs)
    image = [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model="nexus-chat-zoo", messages=[{"role": "user", "content": image}])
