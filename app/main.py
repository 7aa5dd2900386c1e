"""The FastAPI application: lifespan, middleware, routers."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import FrameType

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from uvicorn.config import STARTUP_FAILURE

from app.config import Settings
from app.errors import install_handlers
from app.metrics import Metrics
from app.middleware import BodyLimitMiddleware, MetricsMiddleware
from app.registry import Registry, StartupError
from app.routes import demo, health, models, predict

log = logging.getLogger("app")

FatalHook = Callable[[str], None]


async def _load_models(registry: Registry, on_fatal: FatalHook | None) -> None:
    try:
        await asyncio.to_thread(registry.load)
    except StartupError as exc:
        registry.error = str(exc)
    except Exception as exc:  # reported, then the service stops
        log.exception("unexpected error while loading models")
        registry.error = f"unexpected error while loading models: {type(exc).__name__}"
    if registry.error is not None:
        log.error("start-up failed: %s", registry.error)
        if on_fatal is not None:
            on_fatal(registry.error)


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


def create_app(
    settings: Settings | None = None,
    on_fatal: FatalHook | None = None,
    load_before_serving: bool = False,
) -> FastAPI:
    """The app. ``load_before_serving`` is for worker processes that share one socket
    (``MNIST_SERVE_WORKERS`` > 1): a worker then accepts connections only once its models
    are loaded, so no request meets a worker that is still loading, and a load failure
    fails the worker's start-up, which makes the supervisor stop them all."""
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = Registry(settings, metrics)
        app.state.registry = registry
        _drain_on_sigterm(registry, settings.drain_delay_s)
        task: asyncio.Task[None] | None = None
        if load_before_serving:
            await _load_models(registry, None)
            if registry.error is not None:
                await asyncio.to_thread(registry.close)
                # The reason is already logged on one line. Raising here would make Starlette
                # and uvicorn print a traceback per worker; leaving with uvicorn's start-up
                # failure code makes the supervisor stop every worker and exit 1.
                logging.shutdown()
                os._exit(STARTUP_FAILURE)
        else:
            # Load in the background: the server answers probes (503) while models load.
            task = asyncio.create_task(_load_models(registry, on_fatal))
        try:
            yield
        finally:
            registry.draining = True
            if task is not None:
                await task
            await asyncio.to_thread(registry.close)

    app = FastAPI(
        title="mnist-serve",
        summary="Small image classifiers (MNIST, Fashion-MNIST) over HTTP",
        version="0.1.0",
        lifespan=lifespan,
    )
    install_handlers(app)
    # POST /predict: the lean ASGI endpoint first; predict.router only documents it.
    app.router.routes.append(predict.predict_route())
    app.include_router(predict.router)
    app.include_router(models.router)
    app.include_router(health.router)
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
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
