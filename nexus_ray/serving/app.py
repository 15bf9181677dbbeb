"""The HTTP API: a FastAPI ingress on Ray Serve, over the model workers and the Planner.

    serve run deployments/local-cpu.yaml      # or: nexus-ray serve
    curl -s localhost:8000/v1/solve -d '{"problem": "12+7*3-5", "strategy": "weighted", "budget": 8}'

Routes: ``POST /v1/solve``, ``POST /v1/chat/completions`` (OpenAI schema plus an optional
``nexus`` object), ``GET /v1/models``, ``GET /healthz``. Every answer carries its ledger.
The search itself runs here, in plain strategy code over remote engine proxies; the models
live in the workers, the limits in the Planner. Bad input gets a JSON error with the right
status (401, 413, 422, 429, 503, 504), never a 500.
"""


import asyncio
import hmac
import json
import logging
import os
import time
import uuid
from dataclasses import replace
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from ray.util import metrics

from nexus_ray.config import ServiceConfig
from nexus_ray.planner.execute import allocation_from_mixes
from nexus_ray.planner.execute import solve as solve_planned
from nexus_ray.planner.sampling import EngineSampler
from nexus_ray.planner.table import load_table
from nexus_ray.search import registry
from nexus_ray.search.registry import SearchContext
from nexus_ray.serving.planner import AdmissionDenied, PlanError, get_planner
from nexus_ray.serving.workers import (
    PolicyWorker,
    RewardWorker,
    WorkerUnavailable,
    connect,
    worker_options,
)
from nexus_ray.tasks.format import ARITH

log = logging.getLogger("ray.serve")

MAX_SEED = 2**31 - 1


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SolveRequest(_Body):
    problem: str = Field(min_length=1, description="e.g. '12+7*3-5' or 'Q: 12+7*3-5'")
    budget: int | None = Field(None, ge=1, description="generations; none: the planner decides")
    strategy: str | None = Field(None, description="a strategy name; none: the planner decides")
    seed: int = Field(0, ge=0, le=MAX_SEED)
    return_candidates: bool = False


class NexusOptions(_Body):
    budget: int | None = Field(None, ge=1)
    strategy: str | None = None
    seed: int = Field(0, ge=0, le=MAX_SEED)
    return_candidates: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str


class ChatRequest(BaseModel):
    """The OpenAI chat schema; sampling fields clients always send are accepted and ignored
    (the plan decides how to sample), ``stream: true`` is refused."""

    model_config = ConfigDict(extra="ignore", strict=True)
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    nexus: NexusOptions | None = None


def _error(status: int, message: str, kind: str, headers: dict | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message, **extra}}, status, headers=headers)


class _Guard:
    """ASGI middleware in front of every route: request body size (413) and API keys (401).

    Runs before FastAPI parses anything, so an unauthenticated or oversized request costs
    nothing and learns nothing. Limits are filled in by the ingress replica at start-up.
    """

    max_body_bytes = 65536
    api_keys: tuple[str, ...] = ()

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.api_keys and scope["path"] != "/healthz" and not self._authorized(headers):
            return await _error(401, "missing or invalid API key (Authorization: Bearer <key>)", "unauthorized")(
                scope, receive, send
            )
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return await self._too_large(scope, receive, send)
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise _BodyTooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._too_large(scope, receive, send)

    def _authorized(self, headers: dict[str, str]) -> bool:
        key = _api_key(headers) or ""
        return any(hmac.compare_digest(key.encode(), k.encode()) for k in self.api_keys)

    async def _too_large(self, scope, receive, send) -> None:
        message = f"request body larger than {self.max_body_bytes} bytes"
        await _error(413, message, "payload_too_large")(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


def _api_keys(env: str | None) -> tuple[str, ...]:
    if env is None:
        return ()
    raw = os.environ.get(env, "")
    keys = tuple(k.strip() for k in raw.split(",") if k.strip())
    if not keys:
        raise RuntimeError(f"api_keys_env is {env!r} but that environment variable holds no keys")
    return keys


def _api_key(headers) -> str | None:
    """The key of ``Authorization: Bearer <key>`` or ``x-api-key: <key>`` (header names lower-case)."""
    auth = headers.get("authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else headers.get("x-api-key")


api = FastAPI(title="nexus_ray", description="Test-time compute allocation for LLM reasoning.")
api.add_middleware(_Guard)


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
    details = [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", "")} for e in err.errors()
    ]
    return _error(422, "invalid request: " + "; ".join(f"{'.'.join(d['loc'])}: {d['msg']}" for d in details[:5]),
                  "invalid_request", details=details[:20])


@api.exception_handler(Exception)
async def _unexpected(request: Request, err: Exception) -> JSONResponse:
    log.exception("unexpected error on %s", request.url.path)
    return _error(500, f"internal error ({type(err).__name__})", "internal_error")


class _Metrics:
    """Prometheus metrics through Ray's metrics API (scraped from each node's metrics port)."""

    def __init__(self) -> None:
        self.requests = metrics.Counter("nexus_requests", "HTTP requests", tag_keys=("route", "status"))
        self.tokens = metrics.Counter(
            "nexus_tokens", "tokens spent by solves", tag_keys=("kind",)
        )
        self.budget = metrics.Counter("nexus_budget_spent", "policy-token equivalents spent by solves")
        self.strategy = metrics.Counter("nexus_strategy", "solves per strategy", tag_keys=("strategy",))
        self.difficulty = metrics.Counter("nexus_difficulty", "solves per difficulty bin", tag_keys=("bin",))
        self.latency = metrics.Histogram(
            "nexus_latency_seconds", "request latency", boundaries=[0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
            tag_keys=("route",),
        )

    def solved(self, strategy: str, difficulty: int | None, ledger: dict) -> None:
        for kind in ("policy_generated", "policy_prefill", "prm"):
            if ledger[f"{kind}_tokens"] > 0:  # Ray counters refuse increments of 0
                self.tokens.inc(ledger[f"{kind}_tokens"], {"kind": kind})
        if ledger["policy_token_equivalents"] > 0:
            self.budget.inc(ledger["policy_token_equivalents"])
        self.strategy.inc(1, {"strategy": strategy})
        self.difficulty.inc(1, {"bin": "unknown" if difficulty is None else str(difficulty)})


class _Failure(Exception):
    """A request-level failure with its HTTP status, raised inside a solve."""

    def __init__(self, status: int, message: str, kind: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.retry_after = status, message, kind, retry_after

    def response(self) -> JSONResponse:
        headers = {"Retry-After": str(max(1, round(self.retry_after)))} if self.retry_after is not None else None
        return _error(self.status, self.message, self.kind, headers)


@serve.deployment(max_ongoing_requests=1024, ray_actor_options={"num_cpus": 0.25})
@serve.ingress(api)
class Ingress:
    def __init__(self, config: dict, policy_handle, prm_handle) -> None:
        self.config = ServiceConfig.model_validate(config)
        _Guard.max_body_bytes = self.config.max_body_bytes
        _Guard.api_keys = _api_keys(self.config.api_keys_env)
        self.policy_handle, self.prm_handle = policy_handle, prm_handle
        self.planner = get_planner(self.config.planner, self.config.planner_name)
        self.table = load_table(self.config.planner.table) if self.config.planner.table else None
        self.engines = None
        self._connecting = asyncio.Lock()
        self.prefix_caching = self.config.policy.engine == "vllm" and self.config.policy.enable_prefix_caching
        self.metrics = _Metrics()

    async def _engines(self):
        async with self._connecting:
            if self.engines is None:
                self.engines = await connect(self.policy_handle, self.prm_handle)
        return self.engines

    async def _solve(self, problem: str, options: SolveRequest | NexusOptions, api_key: str | None) -> dict:
        cfg = self.config
        if len(problem) > cfg.max_problem_chars:
            raise _Failure(422, f"problem longer than {cfg.max_problem_chars} characters", "invalid_request")
        try:
            expression = ARITH.parse(problem)
        except ValueError as err:
            raise _Failure(422, str(err), "invalid_request") from None
        try:
            plan = await self.planner.plan.remote(expression, options.budget, options.strategy, api_key)
        except PlanError as err:
            raise _Failure(422, str(err.args[0]), "invalid_request") from None
        except AdmissionDenied as err:
            raise _Failure(429, str(err), "rate_limited", retry_after=err.retry_after) from None
        spent = 0.0
        try:
            if plan.wait_s > 0:
                await asyncio.sleep(plan.wait_s)
            policy, prm = await self._engines()
            ctx = SearchContext(
                policy, prm, ARITH.prompt(expression), ARITH, seed=options.seed, prefix_caching=self.prefix_caching
            )
            if plan.strategy == "planner":
                ledger = ctx.new_ledger()
                planned = await asyncio.wait_for(
                    solve_planned(EngineSampler(ctx), expression, self.table, allocation_from_mixes(plan.params["mixes"]),
                                  ledger),
                    cfg.request_timeout_s,
                )
                result = planned.to_search_result()
                plan = replace(plan, difficulty=planned.bin, params=planned.to_dict())
            else:
                result = await asyncio.wait_for(
                    registry.run(plan.strategy, ctx, plan.budget, plan.params), cfg.request_timeout_s
                )
            spent = result.ledger.policy_token_equivalents
        except asyncio.TimeoutError:
            spent = plan.reserved
            raise _Failure(504, f"solve took longer than {cfg.request_timeout_s:g} s", "timeout") from None
        except WorkerUnavailable as err:
            raise _Failure(503, str(err), "unavailable", retry_after=5) from None
        finally:
            self.planner.settle.remote(api_key, plan.reserved, spent)
        out = result.to_dict(with_candidates=options.return_candidates)
        plan_out = {k: v for k, v in plan.to_dict().items() if k not in ("ticket", "reserved")}
        self.metrics.solved(plan.strategy, plan.difficulty, out["ledger"])
        out["strategy"] = plan.strategy  # the name asked for ("weighted"), not its family ("best_of_n")
        return {"problem": expression, **out, "budget": plan.budget, "difficulty": plan.difficulty, "plan": plan_out}

    async def _respond(self, route: str, make) -> JSONResponse:
        start = time.monotonic()
        try:
            response = JSONResponse(await make())
        except _Failure as failure:
            response = failure.response()
        self.metrics.requests.inc(1, {"route": route, "status": str(response.status_code)})
        self.metrics.latency.observe(time.monotonic() - start, {"route": route})
        return response

    @api.post("/v1/solve")
    async def solve(self, body: SolveRequest, request: Request) -> JSONResponse:
        """Solve one problem; without strategy and budget the planner chooses."""
        return await self._respond("/v1/solve", lambda: self._solve(body.problem, body, _api_key(request.headers)))

    @api.post("/v1/chat/completions")
    async def chat(self, body: ChatRequest, request: Request) -> JSONResponse:
        """OpenAI-compatible: the last user message is the problem; ``nexus`` sets budget/strategy."""

        async def make() -> dict:
            if body.stream:
                raise _Failure(422, "stream: true is not supported; send stream: false", "invalid_request")
            if body.model != self.config.model_id:
                raise _Failure(422, f"unknown model {body.model[:80]!r}; GET /v1/models lists {self.config.model_id!r}",
                               "invalid_request")
            users = [m.content for m in body.messages if m.role == "user"]
            if not users:
                raise _Failure(422, "messages hold no user message with the problem", "invalid_request")
            solved = await self._solve(users[-1], body.nexus or NexusOptions(), _api_key(request.headers))
            ledger = solved["ledger"]
            return {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.config.model_id,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": solved["solution"]},
                    "finish_reason": "length" if solved["truncated"] else "stop",
                }],
                "usage": {
                    "prompt_tokens": ledger["policy_prefill_tokens"],
                    "completion_tokens": ledger["policy_generated_tokens"],
                    "total_tokens": ledger["policy_prefill_tokens"] + ledger["policy_generated_tokens"],
                },
                "nexus": {k: v for k, v in solved.items() if k != "solution"},
            }

        return await self._respond("/v1/chat/completions", make)

    @api.get("/v1/models")
    async def models(self) -> dict:
        cfg = self.config
        return {
            "object": "list",
            "data": [{
                "id": cfg.model_id, "object": "model", "owned_by": "nexus_ray",
                "policy": cfg.policy.model, "prm": cfg.prm.model, "strategies": registry.names(),
            }],
        }

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        """200 when the Planner and both workers answer within 5 s, else 503."""
        try:
            await asyncio.wait_for(
                asyncio.gather(self.planner.ping.remote(), self.policy_handle.info.remote(), self.prm_handle.info.remote()),
                5.0,
            )
        except Exception as err:  # any failure to answer is "not healthy", with the reason
            return _error(503, f"not ready: {type(err).__name__}", "unavailable", {"Retry-After": "5"})
        return JSONResponse({"status": "ok"})

    @api.get("/v1/planner")
    async def planner_stats(self) -> dict:
        """The Planner's counters and bucket levels (keys appear hashed)."""
        return await self.planner.stats.remote()


def build_app(args: dict) -> serve.Application:
    """The Serve application for a ``ServiceConfig`` (a Serve config's ``args:`` block)."""
    try:
        config = ServiceConfig.model_validate(args or {})
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        raise ValueError(f"invalid nexus_ray service config: {problems}") from None
    _api_keys(config.api_keys_env)  # a missing key variable fails here, not at the first request
    if config.planner.table is not None:  # so does a missing, unreadable or stale plan table
        load_table(config.planner.table).check_models(config.policy.model, config.prm.model)
    policy = PolicyWorker.options(**worker_options(config.policy, config.policy_worker)).bind(
        config.policy.model_dump(), config.policy_worker.batching
    )
    prm = RewardWorker.options(**worker_options(config.prm, config.prm_worker)).bind(
        config.prm.model_dump(), config.prm_worker.batching
    )
    ingress = Ingress.options(ray_actor_options={"num_cpus": config.num_cpus})
    return ingress.bind(json.loads(config.model_dump_json()), policy, prm)
