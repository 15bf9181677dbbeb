"""The HTTP plumbing in one process, no Ray: the guard middleware over raw ASGI messages (chunked
bodies, a stalled client, a disconnect), the framework's errors in the service's format on the
real ingress app. End to end through Ray Serve's proxy: tests/test_serving_http.py."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.testclient import TestClient
from starlette.exceptions import HTTPException

from nexus_ray.serving import http
from nexus_ray.serving.http import Guard, error_response
from nexus_ray.serving.schemas import SolveRequest


def echo_app() -> FastAPI:
    """A route like the ingress's, behind the same middleware and handlers."""
    app = FastAPI()
    app.add_middleware(Guard)
    app.add_exception_handler(RequestValidationError, http.invalid_request)
    app.add_exception_handler(HTTPException, http.http_error)

    @app.post("/v1/solve")
    async def solve(body: SolveRequest, request: Request) -> dict:
        return {"problem": body.problem, "content_type": request.headers["content-type"]}

    return app


async def call(app, messages, *, method="POST", headers=(), stall=False, after=()):
    """Run one request through ``app`` with these receive messages; the sent messages. With
    ``stall`` the client sends nothing after ``messages``; ``after`` comes once they are used."""
    pending = list(messages) + list(after)
    sent: list[dict] = []

    async def receive():
        if pending:
            return pending.pop(0)
        if stall:
            await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": "/v1/solve",
        "raw_path": b"/v1/solve",
        "root_path": "",
        "query_string": b"",
        "headers": [(k.encode(), v.encode()) for k, v in headers],
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 1234),
    }
    await app(scope, receive, send)
    return sent


def answer(sent: list[dict]) -> tuple[int, dict, dict]:
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return start["status"], json.loads(body), headers


def chunks(body: bytes, size: int) -> list[dict]:
    parts = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    return [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]


def test_a_chunked_body_over_the_limit_is_a_413_not_a_400():
    body = json.dumps({"problem": "1" * 200_000}).encode()  # no Content-Length: chunked
    status, out, headers = answer(asyncio.run(call(echo_app(), chunks(body, 8192))))
    assert status == 413 and out["error"]["type"] == "payload_too_large"
    assert "larger than 65536" in out["error"]["message"] and headers["connection"] == "close"


def test_a_body_in_many_chunks_reaches_the_route_whole():
    body = json.dumps({"problem": "12+7*3", "seed": 3}).encode()
    status, out, _ = answer(asyncio.run(call(echo_app(), chunks(body, 5))))
    assert (status, out["problem"]) == (200, "12+7*3")


def test_a_stalled_body_is_a_408_after_the_read_timeout(monkeypatch):
    monkeypatch.setattr(Guard, "body_read_timeout_s", 0.3)
    first = [{"type": "http.request", "body": b'{"problem": "1+2"', "more_body": True}]
    start = time.monotonic()
    sent = asyncio.run(call(echo_app(), first, headers=[("content-length", "100")], stall=True))
    status, out, headers = answer(sent)
    assert 0.3 <= time.monotonic() - start < 2
    assert status == 408 and out["error"]["type"] == "request_timeout"
    assert "within 0.3 s" in out["error"]["message"] and headers["connection"] == "close"


def test_a_client_gone_mid_body_gets_no_answer_and_later_receives_pass_through():
    first = [{"type": "http.request", "body": b'{"problem"', "more_body": True}]
    assert asyncio.run(call(echo_app(), first)) == []  # the disconnect ends it quietly
    seen = []

    async def app(scope, receive, send):
        seen.append(await receive())
        seen.append(await receive())
        await error_response(418, "teapot", "teapot")(scope, receive, send)

    asyncio.run(call(Guard(app), chunks(b"abc", 1), method="GET", after=[{"type": "http.disconnect"}]))
    assert seen == [
        {"type": "http.request", "body": b"abc", "more_body": False},
        {"type": "http.disconnect"},
    ]


@pytest.mark.parametrize(
    "content_type", [None, "application/x-www-form-urlencoded", "text/plain", "multipart/form-data"]
)
def test_a_post_body_is_json_whatever_the_content_type(content_type):
    headers = {} if content_type is None else {"Content-Type": content_type}
    out = TestClient(echo_app()).post("/v1/solve", content=b'{"problem": "1+2"}', headers=headers)
    assert out.status_code == 200 and out.json() == {"problem": "1+2", "content_type": "application/json"}


@pytest.mark.parametrize(
    "raw, needle",
    [
        (b'{"problem": "\xff1+2"}', "not valid UTF-8 (byte 13)"),
        (b'{"problem": "\xed\xa0\x80"}', "not valid UTF-8"),  # a surrogate encoded as UTF-8
        (b'{"problem": "1+2\\ud800"}', "lone UTF-16 surrogate"),
        (b'{"problem": "1", "\\uDC00": 1}', "lone UTF-16 surrogate"),
        (b"[" * 1000 + b"]" * 1000, "nested too deeply"),
        (b'{"problem": ' + b"[" * 5000 + b'"\\ud800"' + b"]" * 5000 + b"}", "nested too deeply"),
    ],
)
def test_bodies_that_are_not_json_text_are_400s_in_our_format(raw, needle):
    out = TestClient(echo_app()).post("/v1/solve", content=raw)
    assert out.status_code == 400 and out.json()["error"]["type"] == "invalid_request"
    assert needle in out.json()["error"]["message"], out.json()


@pytest.mark.parametrize(
    "raw, problem",
    [
        (b'{"problem": "\\ud83d\\ude00"}', "\U0001f600"),  # a surrogate pair is one character
        (b'{"problem": "\\\\ud800"}', "\\ud800"),  # an escaped backslash: the text \ud800
        ('{"problem": "١٢+٧"}'.encode(), "١٢+٧"),
    ],
)
def test_valid_unicode_passes_the_guard(raw, problem):
    out = TestClient(echo_app()).post("/v1/solve", content=raw)
    assert out.status_code == 200 and out.json()["problem"] == problem


def test_an_error_echoing_a_lone_surrogate_still_renders():
    response = error_response(422, "bad \ud800 input", "invalid_request")
    assert json.loads(response.body)["error"]["message"] == "bad \ud800 input"


def test_framework_errors_on_the_real_ingress_are_in_our_format():
    from nexus_ray.serving.ingress import api

    client = TestClient(api)
    for method, path in [("POST", "/v1/completions"), ("POST", "/v1/responses"), ("GET", "/nope")]:
        out = client.request(method, path)
        error = out.json()["error"]
        assert out.status_code == 404 and error["type"] == "not_found", out.json()
        assert path in error["message"] and "POST /v1/chat/completions" in error["message"]
        assert "GET /v1/models/{model_id}" in error["message"] and "/openapi.json" not in error["message"]
    for method, path, allowed in [("GET", "/v1/solve", "POST"), ("POST", "/v1/models", "GET")]:
        out = client.request(method, path)
        assert out.status_code == 405 and out.json()["error"]["type"] == "method_not_allowed"
        assert out.headers["allow"] == allowed and f"allowed: {allowed}" in out.json()["error"]["message"]
    out = client.post("/v1/solve", content=b"[" * 1000 + b"]" * 1000)
    assert out.status_code == 400 and "nested too deeply" in out.json()["error"]["message"]
    out = client.post("/v1/solve", content=b'{"problem": ')
    assert out.status_code == 422 and out.json()["error"]["type"] == "invalid_request"
