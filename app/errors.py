"""Typed errors, mapped to HTTP status codes in one place."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from app.context import current_request_id

log = logging.getLogger("app")

REQUEST_ID_HEADER = "X-Request-ID"


class ServeError(Exception):
    """An error whose message is safe to show the client."""

    status_code = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    @property
    def headers(self) -> dict[str, str] | None:
        """Headers the response carries besides the JSON body."""
        return None


class InvalidImage(ServeError):
    status_code = 400  # undecodable, truncated, corrupt


class InvalidInput(ServeError):
    status_code = 400  # an inference request that does not fit the model (V2 tensors)


class Unauthorized(ServeError):
    status_code = 401

    @property
    def headers(self) -> dict[str, str] | None:
        return {"WWW-Authenticate": "Bearer"}


class ModelNotFound(ServeError):
    status_code = 404


class PayloadTooLarge(ServeError):
    status_code = 413  # body, pixel count or file count past its limit


class UnsupportedMediaType(ServeError):
    status_code = 415


class NoFile(ServeError):
    status_code = 422


class NotReady(ServeError):
    status_code = 503


class Overloaded(ServeError):
    """The model's queue is full, or a request waited past its timeout: come back after
    ``retry_after`` seconds (app/admission.py)."""

    status_code = 503

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(self.retry_after)}


class QueueTimeout(Overloaded):
    """The request was still queued when MNIST_SERVE_REQUEST_TIMEOUT_S ran out."""


def is_v2(path: str) -> bool:
    """A route of the Open Inference Protocol (``/v2``, ``/v2/...``)."""
    return path == "/v2" or path.startswith("/v2/")


def error_response(
    status_code: int, detail: object, path: str = "", headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The error body for a request to ``path``: ``{"error": ...}`` on the Open Inference
    Protocol's routes (its clients read that key), ``{"detail": ...}`` on the others; with
    the request's ID (app/context.py) in it and in a header, so that the outermost 500
    handler, past the middleware that echoes it, carries it too."""
    body: dict[str, object] = {"error": detail} if is_v2(path) else {"detail": detail}
    rid = current_request_id()
    if rid is not None:
        body["request_id"] = rid
        headers = {**(headers or {}), REQUEST_ID_HEADER: rid}
    return JSONResponse(body, status_code=status_code, headers=headers)


async def _serve_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServeError)
    return error_response(exc.status_code, exc.detail, request.url.path, exc.headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    # Starlette's own 404 (no such route) and 405 (wrong method), in the shape of the path.
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, exc.detail, request.url.path, exc.headers)


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    path = request.url.path
    if is_v2(path):
        # V2 answers a request it cannot parse with a 400 and one message, as KServe and
        # Triton do.
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return error_response(400, f"{where}: {first.get('msg', 'invalid request')}", path)
    # FastAPI's 422 for bad query parameters, its usual body with the request ID added.
    return error_response(422, jsonable_encoder(exc.errors()), path)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # The traceback goes to the log, never to the client.
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal server error", request.url.path)


async def _client_gone(request: Request, exc: Exception) -> JSONResponse:
    # The client hung up mid-upload: nobody will read an answer, and it is not our error.
    log.info("client disconnected during %s %s", request.method, request.url.path)
    return error_response(499, "client closed the request", request.url.path)


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServeError, _serve_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected)
