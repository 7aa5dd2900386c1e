"""Typed errors, mapped to HTTP status codes in one place."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
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


def error_response(status_code: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status_code)


async def _serve_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServeError)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # The traceback goes to the log, never to the client.
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal server error")


async def _client_gone(request: Request, exc: Exception) -> JSONResponse:
    # The client hung up mid-upload: nobody will read an answer, and it is not our error.
    log.info("client disconnected during %s %s", request.method, request.url.path)
    return error_response(499, "client closed the request")


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServeError, _serve_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected)
