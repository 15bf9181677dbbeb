"""The GPU configs' path on this machine: deployments/local-cpu-chat-hf.yaml with only the model
paths changed, serving model directories nexus_ray has never seen, driven by the official
``openai`` client over real HTTP."""

from __future__ import annotations

import os

import openai
import pytest
import ray
from ports import free_port
from ray import serve

from nexus_ray.config import load_service_config
from nexus_ray.serving import admission
from nexus_ray.serving.app import build_app
from nexus_ray.serving.local import wait_healthy
from tests.unseen_models import build_policy, build_prm

KEY = "chat-test-key"


def deploy(config_path: str, policy, prm, namespace: str):
    """Start a local cluster and serve ``config_path`` with only the two model paths replaced."""
    os.environ["NEXUS_API_KEYS"] = KEY  # the config names this variable, as gpu-single.yaml does
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, namespace=namespace)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    config, _ = load_service_config(config_path)
    args = config.model_dump()
    args["policy"]["model"], args["prm"]["model"] = str(policy), str(prm)
    admission.clear_state(args["planner_name"])
    serve.run(build_app(args), name="nexus", route_prefix="/", blocking=False)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, 300)
    return url, config.model_id


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    policy = build_policy(root / "my-qwen2-policy", seed=5)
    prm = build_prm(root / "my-prm", policy)
    url, model_id = deploy("deployments/local-cpu-chat-hf.yaml", policy, prm, "chat")
    yield openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0), model_id
    serve.shutdown()
    ray.shutdown()


def test_a_free_form_question_is_answered_through_the_openai_client(service):
    client, model_id = service
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
    client, model_id = service
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
    client, model_id = service
    anonymous = openai.OpenAI(base_url=str(client.base_url), api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        anonymous.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "1+1?"}])
