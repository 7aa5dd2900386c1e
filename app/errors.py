"""Typed errors, mapped to HTTP status codes in one place."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

log = logging.getLogger("app")


class ServeError(Exception):
    """An error whose message is safe to show the client."""

    status_code = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidImage(ServeError):
    status_code = 400  # undecodable, truncated, corrupt


class InvalidInput(ServeError):
    status_code = 400  # an inference request that does not fit the model (V2 tensors)


class Unauthorized(ServeError):
    status_code = 401


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


def is_v2(path: str) -> bool:
    """A route of the Open Inference Protocol (``/v2``, ``/v2/...``)."""
    return path == "/v2" or path.startswith("/v2/")


def error_response(
    status_code: int, detail: str, path: str = "", headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The error body for a request to ``path``: ``{"error": ...}`` on the Open Inference
    Protocol's routes (its clients read that key), ``{"detail": ...}`` on the others."""
    body = {"error": detail} if is_v2(path) else {"detail": detail}
    return JSONResponse(body, status_code=status_code, headers=headers)


async def _serve_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServeError)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
    return error_response(exc.status_code, exc.detail, request.url.path, headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    # V2 answers a request it cannot parse with a 400 and one message, as KServe and Triton do.
    assert isinstance(exc, RequestValidationError)
    if not is_v2(request.url.path):
        return await request_validation_exception_handler(request, exc)
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(part) for part in first.get("loc", ()))
    return error_response(400, f"{where}: {first.get('msg', 'invalid request')}", "/v2")


async def _http_error(request: Request, exc: Exception) -> Response:
    # Starlette's own 404 (no such route) and 405 (wrong method), in the shape of the path.
    assert isinstance(exc, HTTPException)
    if not is_v2(request.url.path):
        return await http_exception_handler(request, exc)
    return error_response(exc.status_code, str(exc.detail), "/v2", exc.headers)


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
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected)
