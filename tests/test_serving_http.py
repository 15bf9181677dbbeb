"""The API's HTTP surface end to end: a real local Ray cluster, Serve's HTTP proxy in front of
the FastAPI ingress, the zoo arith models, real HTTP (raw sockets where the framing is the point).

Every error, the framework's included, is ``{"error": {"type", "message"}}``; a body is read
whole by the guard (413 chunked, 408 stalled); a POST body is JSON whatever its Content-Type;
``GET /v1/models/{id}`` works with the official client; hostile fields never get a 5xx.
"""

from __future__ import annotations

import http.client
import json
import re
import shlex
import socket
import subprocess
import threading
import time
import typing
from pathlib import Path

import openai
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from ports import start_serve, stop_serve
from pydantic import BaseModel
from ray import serve

from nexus_ray.config import load_service_config
from nexus_ray.serving import admission, app, local
from nexus_ray.serving.app import build_app
from nexus_ray.serving.local import wait_healthy
from nexus_ray.serving.schemas import ChatRequest, SolveRequest

ROOT = Path(__file__).resolve().parent.parent
READ_TIMEOUT_S = 1.5
JSON_TYPE = "-H 'Content-Type: application/json'"


@pytest.fixture(scope="module")
def service():
    """deployments/local-cpu.yaml (no API keys) with cheap defaults: a request that names no
    strategy is greedy at budget 1, and no budget goes past 8 (the README's examples use 8)."""
    url = start_serve("http", http_options={"request_timeout_s": 120})
    config, _ = load_service_config(ROOT / "deployments/local-cpu.yaml")
    args = config.model_dump() | {
        "planner_name": "planner-http",
        "body_read_timeout_s": READ_TIMEOUT_S,
        "num_cpus": 0.1,
    }
    args["planner"] |= {"table": None, "default_strategy": "greedy", "default_budget": 1, "max_budget": 8}
    args["policy_worker"] |= {"num_cpus": 0.1}
    args["prm_worker"] |= {"num_cpus": 0.1}
    admission.clear_state("planner-http")
    serve.run(build_app(args), name="nexus", route_prefix="/", blocking=False)
    wait_healthy(url, 240)
    yield url
    stop_serve()


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def send(url: str, method: str, path: str, body: bytes | None = None, headers=None):
    """One request on a fresh connection: (status, headers, body parsed as JSON when it is)."""
    conn = http.client.HTTPConnection(*address(url), timeout=120)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
        kind = resp.getheader("content-type", "")
        return resp.status, dict(resp.getheaders()), json.loads(raw) if "json" in kind else raw
    finally:
        conn.close()


def raw_exchange(url: str, head: bytes, chunks=(), pause_s: float = 0.0) -> tuple[int, dict, dict, float]:
    """Write ``head`` then ``chunks`` on a raw socket (from a thread, so a server that answers
    and closes early cannot lose its answer to our writes), then ``pause_s`` of silence; read
    the answer. Returns (status, headers, JSON body, seconds from the head to the answer)."""
    sock = socket.create_connection(address(url), timeout=60)
    start = time.monotonic()

    def write() -> None:
        try:
            sock.sendall(head)
            for chunk in chunks:
                sock.sendall(chunk)
        except OSError:  # the server answered and closed while we were still writing
            pass

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    data = b""
    try:
        while b"\r\n\r\n" not in data or len(data) < _expected_length(data):
            got = sock.recv(65536)
            if not got:
                break
            data += got
    except ConnectionResetError:
        pass
    elapsed = time.monotonic() - start
    sock.close()
    writer.join(10)
    head_text, _, body = data.partition(b"\r\n\r\n")
    lines = head_text.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(body), elapsed


def _expected_length(data: bytes) -> int:
    head, _, _ = data.partition(b"\r\n\r\n")
    match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return len(head) + 4 + (int(match.group(1)) if match else 0)


def assert_error(out, status: int | None = None) -> dict:
    """The service's error format: {"error": {"type": str, "message": str, ...}}."""
    assert isinstance(out, dict) and isinstance(out.get("error"), dict), out
    error = out["error"]
    assert isinstance(error.get("type"), str) and isinstance(error.get("message"), str), out
    assert error["message"], out
    return error


def request_head(method: str, path: str, url: str, headers: dict) -> bytes:
    host = address(url)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host[0]}:{host[1]}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# -- framing, on raw sockets --------------------------------------------------------------


def test_invalid_utf8_and_deep_json_are_400s_in_our_format(service):
    for body, needle in [
        (b'{"problem": "1+\xff2"}', "not valid UTF-8"),
        (b"[" * 1000 + b"]" * 1000, "nested too deeply"),
        (b'{"problem": ' + b"[" * 1000 + b"]" * 1000 + b"}", "nested too deeply"),
        (b'{"problem": "1+2\\ud800"}', "lone UTF-16 surrogate"),
    ]:
        headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
        status, _, out, _ = raw_exchange(service, request_head("POST", "/v1/solve", service, headers) + body)
        assert status == 400 and assert_error(out)["type"] == "invalid_request", out
        assert needle in out["error"]["message"], out


def test_a_2mb_chunked_body_is_a_413(service):
    head = request_head("POST", "/v1/solve", service, {"Transfer-Encoding": "chunked"})
    piece = b"1" * 65536
    chunks = [b"%x\r\n%s\r\n" % (len(piece), piece)] * 32 + [b"0\r\n\r\n"]
    status, _, out, _ = raw_exchange(service, head, chunks)
    assert status == 413 and assert_error(out)["type"] == "payload_too_large", out
    assert "larger than 65536 bytes" in out["error"]["message"]
    length = {"Content-Type": "application/json", "Content-Length": str(2 * 2**20)}
    status, _, out, _ = raw_exchange(service, request_head("POST", "/v1/solve", service, length))
    assert status == 413 and assert_error(out)["type"] == "payload_too_large"  # declared: not read


def test_a_stalled_body_is_a_408_within_the_read_timeout(service):
    """Content-Length 100, 37 bytes sent, then silence: a 408 after body_read_timeout_s, and
    the connection is closed rather than held."""
    head = request_head(
        "POST", "/v1/solve", service, {"Content-Type": "application/json", "Content-Length": "100"}
    )
    sent = b'{"problem": "12+7*3", "strategy": "gr'
    assert len(sent) == 37
    status, headers, out, elapsed = raw_exchange(service, head + sent)
    assert status == 408 and assert_error(out)["type"] == "request_timeout", out
    assert f"within {READ_TIMEOUT_S:g} s" in out["error"]["message"]
    assert READ_TIMEOUT_S <= elapsed < READ_TIMEOUT_S + 5, elapsed
    assert headers.get("connection") == "close"


def test_unknown_routes_and_wrong_methods_on_raw_sockets(service):
    for method, path in [("GET", "/nope"), ("POST", "/v1/completions"), ("POST", "/v1/responses")]:
        body = b"{}" if method == "POST" else b""
        head = request_head(method, path, service, {"Content-Length": str(len(body))})
        status, _, out, _ = raw_exchange(service, head + body)
        assert status == 404 and assert_error(out)["type"] == "not_found", out
        assert path in out["error"]["message"] and "POST /v1/solve" in out["error"]["message"]
    for method, path, allowed in [("GET", "/v1/solve", "POST"), ("DELETE", "/v1/models", "GET")]:
        status, headers, out, _ = raw_exchange(service, request_head(method, path, service, {}))
        assert status == 405 and assert_error(out)["type"] == "method_not_allowed", out
        assert headers["allow"] == allowed


# -- content type, the documented curl lines ------------------------------------------------


@pytest.mark.parametrize(
    "content_type", [None, "application/x-www-form-urlencoded", "text/plain", "application/json"]
)
def test_a_post_body_is_json_whatever_its_content_type(service, content_type):
    headers = {} if content_type is None else {"Content-Type": content_type}
    status, _, out = send(service, "POST", "/v1/solve", b'{"problem": "12+7*3"}', headers)
    assert status == 200 and out["answer"] == "33" and out["strategy"] == "greedy", out


def documented_curls() -> list[tuple[str, str]]:
    """(where, command) for every curl line a user is told to paste against a local service:
    the README's service section, ``nexus-ray serve``'s "Try:" line, app.py's docstring."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The service (Ray Serve)", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    docstring = app.__doc__.split("\n\n", 2)[1]
    found = []
    for where, text in [("README.md", block), ("app.py", docstring)]:
        command = ""
        for line in text.splitlines():
            line = line.split("  # ", 1)[0].strip() if not command else line.strip()
            if line.startswith("curl ") or command:
                command = (command + " " + line.removesuffix("\\")).strip()
                if line.endswith("\\") or command.count("'") % 2:
                    continue  # continued on the next line
                found.append((where, command))
                command = ""
    found.append(("nexus-ray serve", local.curl_example("http://localhost:8000")))
    return found


def test_the_documented_curl_lines_work_pasted_with_and_without_the_content_type(service):
    curls = documented_curls()
    assert [w for w, _ in curls].count("README.md") >= 3 and {w for w, _ in curls} >= {"app.py"}
    host = service.removeprefix("http://")
    for where, command in curls:
        assert JSON_TYPE in command or " -d " not in command, (where, command)  # every POST has it
        for variant in (command, command.replace(JSON_TYPE + " ", "")):
            line = variant.replace("localhost:8000", host) + " -w '\\n%{http_code}'"
            done = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=120)
            body, _, code = done.stdout.rpartition("\n")
            assert done.returncode == 0 and code == "200", (where, variant, done.stdout, done.stderr)
            assert "error" not in json.loads(body), (where, variant, body)
            assert shlex.split(variant)[0] == "curl"


# -- GET /v1/models/{id} --------------------------------------------------------------------


def test_models_retrieve_with_the_openai_client(service):
    client = openai.OpenAI(base_url=service + "/v1", api_key="unused", max_retries=0)
    listed = client.models.list().data
    model = client.models.retrieve("nexus-arith")
    assert model.id == "nexus-arith" and model.object == "model" and model.owned_by == "nexus_ray"
    assert [model.model_dump()] == [m.model_dump() for m in listed]
    for unknown in ["gpt-4o", "org/some-model", "nexus-arith/x", "NEXUS-ARITH"]:
        with pytest.raises(openai.NotFoundError) as err:
            client.models.retrieve(unknown)
        error = assert_error({"error": err.value.body})  # the client hands over what "error" holds
        assert error["type"] == "not_found" and err.value.code == "model_not_found", error
        assert "does not exist" in error["message"] and err.value.param == "model"


# -- input hygiene ---------------------------------------------------------------------------


@pytest.mark.parametrize("problem", ["١٢+٧", "１２+７", "१२+७", "Q: 12+٧"])
def test_non_ascii_digits_are_a_422_on_both_routes(service, problem):
    status, _, out = send(service, "POST", "/v1/solve", json.dumps({"problem": problem}).encode())
    assert status == 422 and "non-ASCII digits" in assert_error(out)["message"], out
    chat = {"model": "nexus-arith", "messages": [{"role": "user", "content": problem}]}
    status, _, out = send(service, "POST", "/v1/chat/completions", json.dumps(chat).encode())
    assert status == 422 and "non-ASCII digits" in assert_error(out)["message"], out


# -- fuzzing every field of both request schemas --------------------------------------------

SCHEMAS: dict[str, type[BaseModel]] = {"/v1/solve": SolveRequest, "/v1/chat/completions": ChatRequest}
# A value each known field accepts, so the hostile one next to it is what a request fails on.
GOOD = {
    "problem": "12+7",
    "budget": 1,
    "strategy": "greedy",
    "seed": 0,
    "return_candidates": False,
    "model": "nexus-arith",
    "stream": False,
    "role": "user",
    "content": "3*4-5",
}
non_ascii_digits = st.text(
    st.characters(categories=["Nd"]) | st.sampled_from("+-* Q:"), min_size=1, max_size=12
)
surrogates = st.text(st.characters(categories=["Cs"]) | st.sampled_from("12+7"), min_size=1, max_size=8)
junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=12,
)
hostile = st.one_of(
    st.sampled_from([None, True, False, 0, -1, 2**31, -(2**63), 10**40, -(10**40), 1.5, "", [], {}]),
    st.integers(-(2**70), 2**70),
    st.floats(),  # NaN and infinities included: Python's encoder writes them, Starlette's reads them
    st.text(max_size=40),
    non_ascii_digits,
    surrogates,
    st.builds(lambda c, n: c * n, st.characters(), st.integers(1_000, 70_000)),  # very long, over 64 KiB too
    junk,
)


def _models_in(annotation) -> tuple[type[BaseModel], bool] | None:
    """The request model a field's annotation holds (bare, optional or in a list), and whether
    in a list."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    for arg in typing.get_args(annotation):
        found = _models_in(arg)
        if found is not None:
            return found[0], found[1] or typing.get_origin(annotation) is list
    return None


def bodies(model: type[BaseModel]) -> st.SearchStrategy[dict]:
    """Bodies for ``model``, field by field from ``model_fields`` (so fields added later are
    fuzzed too): each a good value, a hostile one, or (when it has a default) left out; nested
    request models recursively; sometimes an unknown field."""
    required, optional = {}, {}
    for name, info in model.model_fields.items():
        choices = [hostile]
        nested = _models_in(info.annotation)
        if nested is not None:
            inner = bodies(nested[0])
            choices.append(st.lists(inner, min_size=1, max_size=3) if nested[1] else inner)
        if name in GOOD:
            choices.append(st.just(GOOD[name]))
        (required if info.is_required() else optional)[info.alias or name] = st.one_of(*choices)
    optional["x-unknown-field"] = hostile
    return st.fixed_dictionaries(required, optional=optional)


FUZZED: list[int] = []
SENT_FIELDS: set[tuple[str, str]] = set()


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(
    route=st.sampled_from(sorted(SCHEMAS)),
    data=st.data(),
    ascii_only=st.booleans(),
    content_type=st.sampled_from([None, "application/json", "application/x-www-form-urlencoded"]),
)
@example(
    route="/v1/solve", data={"problem": "12+7", "strategy": "greedy"}, ascii_only=True, content_type=None
)
@example(
    route="/v1/chat/completions",
    data={"model": "nexus-arith", "messages": [{"role": "user", "content": "1+\ud800"}]},
    ascii_only=True,
    content_type="text/plain",
)
def test_fuzz_every_field_never_5xx(service, route, data, ascii_only, content_type):
    """Hostile values in every field of both schemas: never a 5xx, and every error in the format."""
    body = data if isinstance(data, dict) else data.draw(bodies(SCHEMAS[route]), label="body")
    text = json.dumps(body, ensure_ascii=ascii_only)  # ascii_only: lone surrogates as \ud800 escapes
    raw = text.encode("utf-8", "surrogatepass")  # else raw: surrogates encoded, invalid UTF-8
    headers = {} if content_type is None else {"Content-Type": content_type}
    status, _, out = send(service, "POST", route, raw, headers)
    FUZZED.append(status)
    SENT_FIELDS.update((route, key) for key in body)
    assert status < 500, (route, body, out)
    if status >= 300:
        assert_error(out)
    elif route == "/v1/solve" and isinstance(out, dict):
        assert out["problem"].isascii() and out["problem"].strip(), out


def test_the_fuzz_reached_the_solver_and_left_the_service_healthy(service):
    assert len(FUZZED) >= 80 and {200, 400, 422} <= set(FUZZED), sorted(set(FUZZED))
    for route, model in SCHEMAS.items():
        assert {(route, f.alias or name) for name, f in model.model_fields.items()} <= SENT_FIELDS
    assert send(service, "GET", "/healthz")[0] == 200
