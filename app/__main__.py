"""``python -m app`` / ``mnist-serve``: start the service with settings from the environment."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import tempfile
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from app.config import Settings
from app.main import create_app
from training.device import DeviceError, resolve_device


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def worker_app() -> FastAPI:
    """The app of one worker process (``MNIST_SERVE_WORKERS`` > 1), built in that process."""
    settings = Settings()
    _configure_logging(settings)
    return create_app(settings, load_before_serving=True)


def _run_workers(settings: Settings, workers: int) -> int:
    """Run ``workers`` processes on one socket under uvicorn's supervisor: SIGTERM reaches
    each worker, which drains as a single server does; a worker that fails to load its
    models stops them all and the exit code is 1."""
    config = uvicorn.Config(
        "app.__main__:worker_app",
        factory=True,
        workers=workers,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout_s),
    )
    # Metrics of all workers in one scrape (see app/metrics.py); a fresh folder per run, so
    # counters never carry over from an earlier one.
    with tempfile.TemporaryDirectory(prefix="mnist-serve-metrics-") as metrics_dir:
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", metrics_dir)
        supervisor = Multiprocess(config, sockets=[config.bind_socket()])
        supervisor.run()
    failed = any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes)
    return 1 if failed else 0


class _Server(uvicorn.Server):
    """uvicorn re-raises a captured SIGTERM once it has shut down, so the process would die
    of the signal (exit 143). A drained shutdown is a clean one: exit 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]


def main() -> int:
    try:
        settings = Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        print(f"error: MNIST_SERVE_{field.upper()}: {first['msg']}", file=sys.stderr)
        return 2
    try:
        device = resolve_device(settings.device)
    except DeviceError as exc:
        print(f"error: MNIST_SERVE_DEVICE: {exc}", file=sys.stderr)
        return 2
    _configure_logging(settings)
    workers = settings.worker_count(device.type)
    if workers > 1:
        return _run_workers(settings, workers)
    exit_code = 0

    def on_fatal(reason: str) -> None:
        nonlocal exit_code
        exit_code = 1
        server.should_exit = True

    config = uvicorn.Config(
        create_app(settings, on_fatal),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout_s),
    )
    server = _Server(config)
    server.run()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
