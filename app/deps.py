"""Typed dependencies for the routes.

They are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in its thread
pool, a hop that costs more than these reads of memory.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request

from app.config import Settings
from app.errors import Unauthorized
from app.registry import Registry


async def get_registry(request: Request) -> Registry:
    return request.app.state.registry  # type: ignore[no-any-return]


RegistryDep = Annotated[Registry, Depends(get_registry)]


def check_api_key(settings: Settings, x_api_key: str | None, authorization: str | None) -> None:
    """With MNIST_SERVE_API_KEY set: ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``."""
    expected = settings.api_key
    if expected is None:
        return
    given = x_api_key
    auth = authorization or ""
    if given is None and auth[:7].lower() == "bearer ":
        given = auth[7:].strip()
    if given is None or not secrets.compare_digest(
        given.encode(), expected.get_secret_value().encode()
    ):
        raise Unauthorized("missing or invalid API key")


async def require_api_key(request: Request, registry: RegistryDep) -> None:
    """The API-key check of the routes that take one (``/predict``, ``/models``)."""
    headers = request.headers
    check_api_key(registry.settings, headers.get("x-api-key"), headers.get("authorization"))


ApiKeyDep = Depends(require_api_key)
