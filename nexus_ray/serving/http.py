"""HTTP plumbing in front of the routes: the guard middleware (API keys, reading the body: its
size, its read timeout, its encoding), every error as one JSON format, and the request failures
that map to them."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import re
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

log = logging.getLogger("ray.serve")

# The error type of each status the service answers (OpenAI-style names); see error_response.
KINDS = {
    400: "invalid_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    422: "invalid_request",
    429: "rate_limited",
    503: "unavailable",
    504: "timeout",
}


class _ErrorJSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:  # a lone surrogate echoed from the request: send it \u-escaped
            return json.dumps(content, separators=(",", ":")).encode()


def error_response(
    status: int,
    message: str,
    kind: str,
    headers: dict | None = None,
    **extra: Any,
) -> JSONResponse:
    """The one error format: ``{"error": {"type": kind, "message": message, **extra}}``."""
    return _ErrorJSON({"error": {"type": kind, "message": message, **extra}}, status, headers=headers)


class Failure(Exception):
    """A request-level failure with its HTTP status, raised inside a solve."""

    def __init__(self, status: int, message: str, kind: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.retry_after = status, message, kind, retry_after

    def response(self) -> JSONResponse:
        headers = None
        if self.retry_after is not None:
            headers = {"Retry-After": str(max(1, round(self.retry_after)))}
        return error_response(self.status, self.message, self.kind, headers)


class Guard:
    """ASGI middleware in front of every route: API keys (401), then the whole request body,
    read here before the app sees any of it.

    A body over ``max_body_bytes`` is a 413 whether it declares its length or streams chunks;
    one not complete within ``body_read_timeout_s`` (a client that stalls mid-body) is a 408;
    a POST body that is not UTF-8 text, or holds a lone surrogate escape, is a 400. The app
    then gets the buffered body (later ``receive()`` calls pass through, so it still hears of
    a disconnect), and a POST is parsed as JSON whatever its Content-Type says: every POST
    route takes JSON, and ``curl -d`` sends ``application/x-www-form-urlencoded``.

    Runs before FastAPI parses anything, so an unauthenticated, oversized or stalled request
    costs nothing and learns nothing. Limits are filled in by the ingress replica at start-up.
    """

    max_body_bytes = 65536
    body_read_timeout_s = 10.0
    api_keys: tuple[str, ...] = ()

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope["path"].removeprefix(scope.get("root_path", ""))  # under a route prefix too
        if self.api_keys and path != "/healthz" and not self._authorized(headers):
            return await error_response(
                401, "missing or invalid API key (Authorization: Bearer <key>)", "unauthorized"
            )(scope, receive, send)
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return await self._too_large(scope, receive, send)
        try:
            body = await asyncio.wait_for(self._read_body(receive), self.body_read_timeout_s)
        except TimeoutError:
            message = f"the request body did not arrive within {self.body_read_timeout_s:g} s"
            return await error_response(408, message, KINDS[408], _CLOSE)(scope, receive, send)
        except _BodyTooLarge:
            return await self._too_large(scope, receive, send)
        if body is None:  # the client went away mid-body: nobody to answer
            return
        if scope["method"] == "POST":
            problem = body_problem(body)
            if problem is not None:
                return await error_response(400, problem, KINDS[400])(scope, receive, send)
            scope = {**scope, "headers": _as_json(scope["headers"])}
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _read_body(self, receive) -> bytes | None:
        """The whole body (None: the client disconnected first); _BodyTooLarge past the limit."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _authorized(self, headers: dict[str, str]) -> bool:
        key = api_key(headers) or ""
        return any(hmac.compare_digest(key.encode(), k.encode()) for k in self.api_keys)

    async def _too_large(self, scope, receive, send) -> None:
        message = f"request body larger than {self.max_body_bytes} bytes"
        await error_response(413, message, KINDS[413], _CLOSE)(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


# Answered before the body was read to its end: the connection cannot carry another request.
_CLOSE = {"Connection": "close"}
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _as_json(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in headers if k.lower() != b"content-type"] + [
        (b"content-type", b"application/json")
    ]


def body_problem(body: bytes) -> str | None:
    """Why a request body cannot be JSON text, as far as its encoding goes (None: it can).

    JSON between systems is UTF-8 (RFC 8259), and a ``\\ud800`` escape without its pair
    decodes to a string no tokenizer or response encoder takes.
    """
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as err:
        return f"the request body is not valid UTF-8 (byte {err.start}): send JSON encoded as UTF-8"
    if _SURROGATE_ESCAPE.search(body) and _lone_surrogate(body):
        return (
            "the request body holds a lone UTF-16 surrogate escape (such as \\ud800 without its pair): "
            "strings must be valid Unicode"
        )
    return None


def _lone_surrogate(body: bytes) -> bool:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return False  # not JSON: the route's parser says so
    stack = [data]
    while stack:  # no recursion: the body may nest as deep as its size allows
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
    return False


def api_keys(env: str | None) -> tuple[str, ...]:
    """The keys in environment variable ``env`` (comma-separated; None: no keys, no auth)."""
    if env is None:
        return ()
    raw = os.environ.get(env, "")
    keys = tuple(k.strip() for k in raw.split(",") if k.strip())
    if not keys:
        raise RuntimeError(f"api_keys_env is {env!r} but that environment variable holds no keys")
    return keys


def api_key(headers) -> str | None:
    """The key of ``Authorization: Bearer <key>`` or ``x-api-key: <key>`` (header names lower-case)."""
    auth = headers.get("authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else headers.get("x-api-key")


async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
    """A body that does not parse or fails its schema: 422 with where and why."""
    details = [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", "").removeprefix("Value error, ")}
        for e in err.errors()
    ]
    summary = "; ".join(
        f"{'.'.join(d['loc'])}: {d['msg']}" if d["loc"][1:] else d["msg"] for d in details[:5]
    )
    return error_response(422, "invalid request: " + summary, "invalid_request", details=details[:20])


async def unexpected(request: Request, err: Exception) -> JSONResponse:
    log.exception("unexpected error on %s", request.url.path)
    return error_response(500, f"internal error ({type(err).__name__})", "internal_error")


async def http_error(request: Request, err: HTTPException) -> JSONResponse:
    """What the framework raises (no such route, a wrong method, a body it could not parse) in
    the service's error format instead of ``{"detail": ...}``."""
    status, headers = err.status_code, dict(err.headers or {})
    where = f"{request.method} {request.url.path[:200]!r}"
    if status == 404 and err.detail == "Not Found":  # the router's: no route matched
        message = f"no route {where}; this API serves {_routes(request)}"
    elif status == 405:
        allowed = headers.get("Allow") or headers.get("allow")
        message = f"method not allowed: {where}" + (f" (allowed: {allowed})" if allowed else "")
    elif status == 400 and err.__cause__ is not None:  # FastAPI could not read the body as JSON
        message = _unparsable(err.__cause__)
    else:
        message = str(err.detail)
    default = "invalid_request" if status < 500 else "internal_error"
    return error_response(status, message, KINDS.get(status, default), headers or None)


def _routes(request: Request) -> str:
    routes = [
        f"{method} {getattr(route, 'path_format', route.path)}"
        for route in request.app.routes
        if getattr(route, "include_in_schema", False)
        for method in sorted(getattr(route, "methods", None) or ())
        if method != "HEAD"
    ]
    return ", ".join(routes) or "no routes"


def _unparsable(cause: BaseException) -> str:
    if isinstance(cause, RecursionError):
        return "the request body is JSON nested too deeply to parse"
    if isinstance(cause, UnicodeError):
        return "the request body is not valid UTF-8: send JSON encoded as UTF-8"
    return f"the request body could not be parsed as JSON ({type(cause).__name__})"
