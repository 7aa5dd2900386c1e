"""The FastAPI application: lifespan, middleware, routers."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import FrameType
from typing import NoReturn

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.config import Settings
from app.errors import install_handlers
from app.metrics import Metrics
from app.middleware import BodyLimitMiddleware, RequestMiddleware
from app.registry import Registry, StartupError
from app.routes import demo, health, models, predict, v2
from app.runtime import configure_process
from training.device import DeviceError, resolve_device

log = logging.getLogger("app")

FatalHook = Callable[[str], NoReturn]


async def _start(settings: Settings, registry: Registry) -> None:
    """Process-wide settings, then every model loaded and warmed up: the one start-up."""
    try:
        device = resolve_device(settings.device)
    except DeviceError as exc:
        raise StartupError(f"MNIST_SERVE_DEVICE: {exc}") from None
    configure_process(settings, device)
    try:
        await asyncio.to_thread(registry.load, device)
    except StartupError:
        raise
    except Exception as exc:
        log.exception("unexpected error while loading models")
        raise StartupError(f"unexpected error while loading models: {type(exc).__name__}") from exc


def _drain_on_sigterm(registry: Registry, delay: float) -> None:
    """Wrap the server's SIGTERM handler: readiness turns 503 at once, and the server's own
    graceful shutdown (stop accepting, finish requests in flight) starts after ``delay``
    seconds, so load balancers see the 503 before the listener closes."""
    if threading.current_thread() is not threading.main_thread():
        return  # e.g. under TestClient: no process signals to handle
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        return
    loop = asyncio.get_running_loop()

    def handler(sig: int, frame: FrameType | None) -> None:
        first = not registry.draining
        registry.draining = True
        if first:
            log.info("SIGTERM: readiness is now 503; draining")
        if first and delay > 0:
            loop.call_soon_threadsafe(loop.call_later, delay, previous, sig, frame)
        else:
            previous(sig, frame)

    signal.signal(signal.SIGTERM, handler)


def create_app(settings: Settings | None = None, on_fatal: FatalHook | None = None) -> FastAPI:
    """The app. Its lifespan loads the models before it serves (a server process accepts
    connections only then), and stops them after the last request. A start-up failure
    goes to ``on_fatal`` with its one-line reason; without one it is raised."""
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = Registry(settings, metrics)
        app.state.registry = registry
        _drain_on_sigterm(registry, settings.drain_delay_s)
        try:
            await _start(settings, registry)
        except StartupError as exc:
            await asyncio.to_thread(registry.close)
            if on_fatal is None:
                raise
            on_fatal(str(exc))
        try:
            yield
        finally:
            registry.draining = True
            await asyncio.to_thread(registry.close)

    app = FastAPI(
        title="mnist-serve",
        summary="Small image classifiers (MNIST, Fashion-MNIST) over HTTP",
        version="0.1.0",
        lifespan=lifespan,
        # FastAPI's OpenTelemetry hooks look up the global providers on every request (~7%
        # of a single-image request's CPU); the service exports Prometheus metrics and logs.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_handlers(app)
    app.router.routes.append(predict.PredictRoute())  # serves the declaration below
    app.include_router(predict.router)
    app.include_router(models.router)
    app.include_router(health.router)
    app.include_router(v2.router)
    app.include_router(demo.router)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
        )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    # Outermost: every response, a 413 from the body limit included, carries the ID and
    # is counted.
    app.add_middleware(RequestMiddleware, metrics=metrics, access_log=settings.access_log)
    return app
