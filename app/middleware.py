"""Pure ASGI middleware: request IDs and access lines, the body-size limit and request
metrics."""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import context
from app.errors import REQUEST_ID_HEADER, error_response
from app.metrics import Metrics

access_log = logging.getLogger("app.access")
_REQUEST_ID_KEY = REQUEST_ID_HEADER.lower().encode("latin-1")


class RequestMiddleware:
    """Gives each request its ID (the client's ``X-Request-ID`` when well-formed, else a new
    one) and the trace id of its ``traceparent``, for its log lines and error bodies
    (app/context.py); echoes the ID on the response; when the request ends, counts it in the
    metrics by route template and status and, with ``access_log``, logs one line. One layer
    for all of it: each layer costs every request a frame on every send."""

    def __init__(self, app: ASGIApp, metrics: Metrics, access_log: bool) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # One pass over the raw headers (names are lower-case bytes in ASGI): this runs for
        # every request, so no Headers object is built.
        given = traceparent = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                given = value.decode("latin-1")
            elif key == b"traceparent":
                traceparent = value.decode("latin-1")
        info = context.RequestInfo(context.request_id(given), context.trace_id(traceparent))
        # Never reset: each request runs in a task of its own (its own copy of the
        # context), and Starlette's outermost 500 handler, past this middleware, needs it.
        context.current.set(info)
        echo = (_REQUEST_ID_KEY, info.request_id.encode("latin-1"))
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                # error_response() may have set it already (see app/errors.py).
                if not any(key.lower() == _REQUEST_ID_KEY for key, _ in headers):
                    message["headers"] = [*headers, echo]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route: Any = scope.get("route")
            # The route's template, not the raw path: unknown paths share one label.
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(path, scope["method"], str(status)).inc()
            self.metrics.request_latency.labels(path).observe(seconds)
            if self.access_log:
                _log_access(scope, status, seconds, info)


def _log_access(scope: Scope, status: int, seconds: float, info: context.RequestInfo) -> None:
    client = scope.get("client")
    extra = {
        "method": scope["method"],
        "path": scope["path"],
        "status": status,
        "duration_ms": round(seconds * 1000, 3),
        "client": f"{client[0]}:{client[1]}" if client else None,
        "model": info.model,
        "images": info.images,
    }
    where = f" model={info.model} images={info.images}" if info.model else ""
    access_log.info(
        "%s %s %d %.1f ms%s", scope["method"], scope["path"], status, seconds * 1000, where,
        extra=extra,
    )  # fmt: skip


class _BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """413 for a body over ``max_bytes``: checked against Content-Length up front, and
    counted as the body streams in (chunked uploads), so nothing unbounded is buffered."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        detail = f"request body is over the limit of {self.max_bytes:,} bytes"
        for key, value in scope["headers"]:
            if key == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await error_response(413, detail, scope["path"])(scope, receive, send)
                    return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await error_response(413, detail, scope["path"])(scope, receive, send)
