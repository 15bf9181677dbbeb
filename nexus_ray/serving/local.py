"""Start the service from a Serve config on this machine (or the cluster at RAY_ADDRESS),
wait until it answers, and optionally send it a few real requests: ``nexus-ray serve``.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import ray
from ray import serve

from nexus_ray.cluster import start_ray
from nexus_ray.config import ServiceConfig, load_service_config

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "deployments" / "local-cpu.yaml"


def start(config_path: Path, port: int | None = None, app: str = "nexus", timeout_s: float = 180) -> str:
    """Deploy application ``app`` of a Serve config and return its URL once ``/healthz`` is 200."""
    config, data = load_service_config(config_path, app)
    http = dict(data.get("http_options") or {})
    if port is not None:
        http["port"] = port
    http.setdefault("host", "127.0.0.1")
    http.setdefault("port", 8000)
    route = next(a for a in data["applications"] if a.get("name") == app).get("route_prefix", "/")
    start_ray()
    serve.start(http_options=http)
    from nexus_ray.serving.app import build_app

    serve.run(build_app(config.model_dump()), name=app, route_prefix=route, blocking=False)
    host = "127.0.0.1" if http["host"] in ("0.0.0.0", "::") else http["host"]
    url = f"http://{host}:{http['port']}{route.rstrip('/')}"
    wait_healthy(url, timeout_s)
    return url


def curl_example(url: str, api_keys_env: str | None = None) -> str:
    """A request to paste into a shell (``nexus-ray serve`` prints it). The Content-Type header
    is the tidy way; the service reads a POST body as JSON without it too. With API keys, the
    first key of the variable ``api_keys_env`` names."""
    auth = f' -H "Authorization: Bearer ${{{api_keys_env}%%,*}}"' if api_keys_env else ""
    body = '{"problem": "12+7*3-5", "strategy": "weighted", "budget": 8}'
    return f"curl -s {url}/v1/solve -H 'Content-Type: application/json'{auth} -d '{body}'"


def wait_healthy(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            status, _ = request(url + "/healthz")
            if status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url}/healthz did not answer 200 within {timeout_s:.0f} s")
        time.sleep(0.5)


def request(
    url: str, body: dict | None = None, headers: dict | None = None, timeout: float = 120
) -> tuple[int, dict]:
    """A real HTTP request; returns (status, JSON body) for errors as well."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            return err.code, json.loads(raw or b"{}")
        except json.JSONDecodeError:
            return err.code, {"raw": raw.decode(errors="replace")}


def smoke(url: str, config: ServiceConfig, echo=print) -> bool:
    """A few real requests a newcomer can read, in the config's task format: solves planned by
    the table and chosen by the caller, a chat completion, a bad request."""
    calls = _chat_calls(config.model_id) if config.task.format == "chat-math" else _arith_calls()
    key = os.environ.get(config.api_keys_env or "", "").split(",")[0].strip()
    headers = {"Authorization": f"Bearer {key}"} if key else None
    ok = True
    for path, body, expected in calls:
        start = time.monotonic()
        status, out = request(url + path, body, headers)
        ms = (time.monotonic() - start) * 1000
        echo(f"POST {path} {json.dumps(body)}")
        if status == 200:
            nexus = out.get("nexus", out)
            ledger = nexus["ledger"]
            how = f"{nexus['strategy']}, budget {nexus['budget']}"
            if nexus["plan"]["source"] == "table":
                chosen = nexus["plan"]["params"]
                how = f"planner: difficulty bin {chosen['bin']}, plan {chosen['plan']}" + (
                    ", early exit" if chosen["early_exit"] else ""
                )
            if "choices" in out:
                content = out["choices"][0]["message"]["content"]
                echo("\n".join("  | " + line for line in content.splitlines() if line.strip()))
            echo(
                f"  -> 200 in {ms:.0f} ms: answer {nexus['answer']} via {how} "
                f"({ledger['policy_token_equivalents']:.0f} policy-token equivalents)"
            )
        else:
            echo(f"  -> {status}: {out.get('error', {}).get('message', out)}")
        ok = ok and status == expected
    return ok


def _chat_calls(model_id: str) -> list[tuple[str, dict, int]]:
    return [
        (
            "/v1/chat/completions",
            {
                "model": model_id,
                "messages": [{"role": "user", "content": "What is 3/4 of 12 minus 5?"}],
                "nexus": {"strategy": "weighted", "budget": 4},
            },
            200,
        ),
        ("/v1/solve", {"problem": "Start with 7. Add 5, then take 1/3 of it. What is the result?"}, 200),
        ("/v1/solve", {"problem": "   "}, 422),
    ]


def _arith_calls() -> list[tuple[str, dict, int]]:
    return [
        ("/v1/solve", {"problem": "12+7*3-5"}, 200),
        ("/v1/solve", {"problem": "Q: 8+0-54*68"}, 200),
        ("/v1/solve", {"problem": "12+7*3-5", "strategy": "greedy"}, 200),
        ("/v1/solve", {"problem": "Q: 48*7-93+15*4", "strategy": "weighted", "budget": 8}, 200),
        (
            "/v1/chat/completions",
            {
                "model": "nexus-arith",
                "messages": [{"role": "user", "content": "57-8*6+19"}],
                "nexus": {"strategy": "majority", "budget": 4},
            },
            200,
        ),
        ("/v1/solve", {"problem": "what is love?"}, 422),
    ]


def stop() -> None:
    serve.shutdown()
    ray.shutdown()
