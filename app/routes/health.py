"""Liveness and readiness, Kubernetes style and Open Inference Protocol (v2) style."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.deps import RegistryDep
from app.schemas import ErrorBody, Health

router = APIRouter(tags=["health"])


@router.get("/health/live", response_model=Health)
@router.get("/v2/health/live", response_model=Health)
async def live() -> Health:
    """200 while the process can serve."""
    return Health(status="alive")


@router.get("/health/ready", response_model=Health, responses={503: {"model": ErrorBody}})
@router.get("/v2/health/ready", response_model=Health, responses={503: {"model": ErrorBody}})
async def ready(registry: RegistryDep) -> Health | JSONResponse:
    """200 once every configured model is loaded and warmed up; 503 before and while draining."""
    reason = registry.not_ready_reason()
    if reason is not None:
        return JSONResponse({"status": "not ready", "detail": reason}, status_code=503)
    return Health(status="ready", models=sorted(registry.models))
