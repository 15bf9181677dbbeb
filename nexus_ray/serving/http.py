"""HTTP plumbing in front of the routes: the guard middleware (body size, API keys), JSON
error responses, and the request failures that map to them."""

from __future__ import annotations

import hmac
import logging
import os
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

log = logging.getLogger("ray.serve")


def error_response(
    status: int,
    message: str,
    kind: str,
    headers: dict | None = None,
    **extra: Any,
) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message, **extra}}, status, headers=headers)


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
        path = scope["path"].removeprefix(scope.get("root_path", ""))  # under a route prefix too
        if self.api_keys and path != "/healthz" and not self._authorized(headers):
            return await error_response(
                401, "missing or invalid API key (Authorization: Bearer <key>)", "unauthorized"
            )(scope, receive, send)
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
        key = api_key(headers) or ""
        return any(hmac.compare_digest(key.encode(), k.encode()) for k in self.api_keys)

    async def _too_large(self, scope, receive, send) -> None:
        message = f"request body larger than {self.max_body_bytes} bytes"
        await error_response(413, message, "payload_too_large")(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


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
