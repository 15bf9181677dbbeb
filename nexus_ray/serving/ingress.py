"""The HTTP routes: a FastAPI ingress on Ray Serve, over the model workers and the admission actor.

Routes: ``POST /v1/solve``, ``POST /v1/chat/completions`` (OpenAI schema plus an optional
``nexus`` object), ``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /healthz``, ``GET /v1/planner``.
A solve is parsed here, planned and admitted by the admission actor, run by ``planner.execute.run_plan``
in plain strategy code over remote engine proxies (the models live in the workers), and
formatted here. Every answer carries its ledger. Bad input gets a JSON error with the right
status (400, 401, 404, 405, 408, 413, 422, 429, 503, 504), never a 500.
"""

import asyncio
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException

from nexus_ray.config import ServiceConfig
from nexus_ray.planner.execute import run_plan
from nexus_ray.planner.request import PlanError
from nexus_ray.planner.table import PlanTable
from nexus_ray.search import registry
from nexus_ray.search.base import SearchContext
from nexus_ray.search.result import SearchResult
from nexus_ray.serving.admission import AdmissionDenied, get_admission
from nexus_ray.serving.completions import Admitted, ChatCompletion
from nexus_ray.serving.http import (
    Failure,
    Guard,
    api_key,
    api_keys,
    error_response,
    http_error,
    invalid_request,
    unexpected,
)
from nexus_ray.serving.metrics import Metrics
from nexus_ray.serving.schemas import ChatRequest, NexusOptions, SolveRequest
from nexus_ray.serving.workers import WorkerUnavailable, connect
from nexus_ray.tasks.chat import Message
from nexus_ray.tasks.format import task_format
from nexus_ray.zoo.registry import resolve

STARTED = int(time.time())  # "created" of the model object: when this replica started

api = FastAPI(title="nexus_ray", description="Test-time compute allocation for LLM reasoning.")
api.add_middleware(Guard)
api.add_exception_handler(RequestValidationError, invalid_request)
api.add_exception_handler(HTTPException, http_error)
api.add_exception_handler(Exception, unexpected)


@serve.deployment(max_ongoing_requests=1024, ray_actor_options={"num_cpus": 0.25})
@serve.ingress(api)
class Ingress:
    def __init__(self, config: dict, policy_handle, prm_handle, table: PlanTable | None) -> None:
        """``table``: the plan table ``build_app`` loaded and checked (None: none configured)."""
        self.config = ServiceConfig.model_validate(config)
        Guard.max_body_bytes = self.config.max_body_bytes
        Guard.body_read_timeout_s = self.config.body_read_timeout_s
        Guard.api_keys = api_keys(self.config.api_keys_env)
        self.policy_handle, self.prm_handle = policy_handle, prm_handle
        self.admission = get_admission(self.config.planner, self.config.planner_name, table)
        self.table = table
        self.engines = None
        self._connecting = asyncio.Lock()
        self.fmt = task_format(self.config.task, resolve(self.config.policy.model))
        self.metrics = Metrics()

    async def _engines(self):
        async with self._connecting:
            if self.engines is None:
                self.engines = await connect(self.policy_handle, self.prm_handle, self.config)
        return self.engines

    async def _admit(
        self,
        problem: str,
        options: SolveRequest | NexusOptions,
        key: str | None,
        turns: tuple[Message, ...] = (),
        effort: str | None = None,
    ) -> Admitted:
        """Parse and plan ``problem`` (the user's last turn) and have admission admit it; under a
        chat format the prompt is built from ``turns`` (the system and user turns) when given."""
        cfg = self.config
        if sum(len(c) for _, c in turns) > cfg.max_problem_chars or len(problem) > cfg.max_problem_chars:
            raise Failure(422, f"problem longer than {cfg.max_problem_chars} characters", "invalid_request")
        try:
            expression = self.fmt.parse(problem)
        except ValueError as err:
            raise Failure(422, str(err), "invalid_request") from None
        try:
            plan = await self.admission.plan.remote(expression, options.budget, options.strategy, key, effort)
        except PlanError as err:
            raise Failure(422, str(err.args[0]), "invalid_request") from None
        except AdmissionDenied as err:
            raise Failure(429, str(err), "rate_limited", retry_after=err.retry_after) from None
        asked = turns if turns and self.fmt.chat is not None else expression
        return Admitted(expression, asked, plan, key)

    async def _run(
        self, admitted: Admitted, options: SolveRequest | NexusOptions, cap: int | None = None
    ) -> tuple[dict, SearchResult]:
        """Run an admitted plan (``cap``: most tokens any one solution may hold); settle it with
        admission whatever happens. Returns the response's fields and the search result."""
        cfg = self.config
        plan, spent, measured = admitted.plan, 0.0, 0
        try:
            if plan.wait_s > 0:
                await asyncio.sleep(plan.wait_s)
            policy, prm = await self._engines()
            ctx = SearchContext.for_problem(
                policy,
                prm,
                self.fmt,
                admitted.asked,
                seed=options.seed or 0,
                max_tokens=cap,
            )
            run = run_plan(plan, ctx, admitted.expression, self.table)
            result, plan = await asyncio.wait_for(run, cfg.request_timeout_s)
            spent = result.ledger.policy_token_equivalents
            measured = plan.budget if plan.allocation is None else 0  # a named plan's spend per generation
        except TimeoutError:
            spent = plan.reserved
            raise Failure(504, f"solve took longer than {cfg.request_timeout_s:g} s", "timeout") from None
        except WorkerUnavailable as err:
            raise Failure(503, str(err), "unavailable", retry_after=5) from None
        finally:
            self.admission.settle.remote(admitted.key, plan, spent, measured)
        out = result.to_dict(with_candidates=options.return_candidates)
        self.metrics.solved(plan.strategy, plan.difficulty, out["ledger"])
        out["strategy"] = plan.strategy  # the name asked for ("weighted"), not its family ("best_of_n")
        solved = {
            "problem": admitted.expression,
            **out,
            "budget": plan.budget,
            "difficulty": plan.difficulty,
            "plan": plan.to_dict(),
        }
        return solved, result

    async def _respond(self, route: str, make) -> Response:
        start = time.monotonic()
        try:
            made = await make()
            response = made if isinstance(made, Response) else JSONResponse(made)
        except Failure as failure:
            response = failure.response()
        self.metrics.requests.inc(1, {"route": route, "status": str(response.status_code)})
        self.metrics.latency.observe(time.monotonic() - start, {"route": route})
        return response

    @api.post("/v1/solve")
    async def solve(self, body: SolveRequest, request: Request) -> Response:
        """Solve one problem; without strategy and budget the planner chooses."""

        async def make() -> dict:
            admitted = await self._admit(body.problem, body, api_key(request.headers))
            solved, _ = await self._run(admitted, body)
            return solved

        return await self._respond("/v1/solve", make)

    @api.post("/v1/chat/completions")
    async def chat(self, body: ChatRequest, request: Request) -> Response:
        """OpenAI-compatible: the last user message is the problem (a chat format also reads the
        system turns and earlier user turns); ``reasoning_effort`` scales the plan, ``nexus``
        sets budget/strategy; ``stream: true`` answers in server-sent events."""

        async def make() -> dict | Response:
            if body.model != self.config.model_id:
                listed = self.config.model_id
                raise Failure(
                    422,
                    f"unknown model {body.model[:80]!r}; GET /v1/models lists {listed!r}",
                    "invalid_request",
                )
            users = [m.text for m in body.messages if m.role == "user"]
            if not users:
                raise Failure(422, "messages hold no user message with the problem", "invalid_request")
            turns = tuple(
                ("system" if m.role == "developer" else m.role, m.text)
                for m in body.messages
                if m.role in ("system", "developer", "user")
            )
            options = body.nexus or NexusOptions()
            if options.seed is None:
                options = options.model_copy(update={"seed": body.seed or 0})
            admitted = await self._admit(
                users[-1], options, api_key(request.headers), turns, body.reasoning_effort
            )
            completion = ChatCompletion(body, self.config.model_id, self._count_tokens)
            if body.stream:  # the solve runs (and settles) even if the client goes away
                solve = asyncio.create_task(self._run(admitted, options, body.token_cap))
                return StreamingResponse(
                    completion.events(admitted.plan, solve, self.fmt.step_delimiter),
                    media_type="text/event-stream",
                )
            solved, result = await self._run(admitted, options, body.token_cap)
            return completion.response(solved, result)

        return await self._respond("/v1/chat/completions", make)

    def _count_tokens(self, text: str) -> int:
        """Tokens of a returned solution (no special tokens), for ``usage`` and ``finish_reason``."""
        policy, _ = self.engines
        return len(policy.tokenizer(text, add_special_tokens=False).input_ids)

    def _model(self) -> dict:
        cfg = self.config
        return {
            "id": cfg.model_id,
            "object": "model",
            "created": STARTED,
            "owned_by": "nexus_ray",
            "policy": cfg.policy.model,
            "prm": cfg.prm.model,
            "strategies": registry.names(),
        }

    @api.get("/v1/models")
    async def models(self) -> dict:
        return {"object": "list", "data": [self._model()]}

    @api.get("/v1/models/{model_id:path}")
    async def model(self, model_id: str) -> JSONResponse:
        """The model object of ``GET /v1/models``; 404 for any other id (OpenAI's retrieve)."""
        if model_id != self.config.model_id:
            listed = self.config.model_id
            message = f"the model {model_id[:80]!r} does not exist; GET /v1/models lists {listed!r}"
            return error_response(404, message, "not_found", param="model", code="model_not_found")
        return JSONResponse(self._model())

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        """200 when the admission actor and both workers answer within 5 s, else 503."""
        try:
            await asyncio.wait_for(
                asyncio.gather(
                    self.admission.ping.remote(),
                    self.policy_handle.info.remote(),
                    self.prm_handle.info.remote(),
                ),
                5.0,
            )
        except Exception as err:  # noqa: BLE001 - any failure to answer is "not healthy", with the reason
            reason = f"not ready: {type(err).__name__}"
            return error_response(503, reason, "unavailable", {"Retry-After": "5"})
        return JSONResponse({"status": "ok"})

    @api.get("/v1/planner")
    async def planner_stats(self) -> dict:
        """The admission actor's counters and bucket levels (keys appear hashed)."""
        return await self.admission.stats.remote()
