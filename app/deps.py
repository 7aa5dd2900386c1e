"""Typed dependencies for the routes.

They are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in its thread
pool, a hop that costs more than these reads of memory.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request

from app.errors import Unauthorized
from app.registry import Registry


async def get_registry(request: Request) -> Registry:
    return request.app.state.registry  # type: ignore[no-any-return]


RegistryDep = Annotated[Registry, Depends(get_registry)]


async def require_api_key(request: Request, registry: RegistryDep) -> None:
    """With MNIST_SERVE_API_KEY set, the routes that take a key (``/predict``, ``/models``)
    need ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``."""
    expected = registry.settings.api_key
    if expected is None:
        return
    given = request.headers.get("x-api-key")
    auth = request.headers.get("authorization", "")
    if given is None and auth[:7].lower() == "bearer ":
        given = auth[7:].strip()
    if given is None or not secrets.compare_digest(
        given.encode(), expected.get_secret_value().encode()
    ):
        raise Unauthorized("missing or invalid API key")


ApiKeyDep = Depends(require_api_key)
