"""``python -m app`` / ``mnist-serve``: start the service with settings from the environment.

One path for one worker or many: every worker process builds its app with
:func:`worker_app`, which loads the models before the worker accepts a connection, so no
request meets a worker that is still loading. A worker that cannot load logs the reason on
one line and exits with uvicorn's start-up failure code; with several workers, the
supervisor then stops them all. Either way the service exits with that code (3).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import tempfile
from collections.abc import Iterator
from typing import NoReturn

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from app.config import Settings
from app.main import create_app
from app.runtime import configure_logging, log_config
from training.device import DeviceError, resolve_device

log = logging.getLogger("app")


def _exit_on_startup_failure(reason: str) -> NoReturn:
    log.error("start-up failed: %s", reason)
    logging.shutdown()
    # Raising would make Starlette and uvicorn print a traceback per worker; this code makes
    # the supervisor stop every worker.
    os._exit(STARTUP_FAILURE)


def worker_app() -> FastAPI:
    """The app of one server process, built in that process."""
    settings = Settings()
    configure_logging(settings)
    return create_app(settings, on_fatal=_exit_on_startup_failure)


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


def serve(settings: Settings, workers: int) -> int:
    """Run ``workers`` server processes on one socket (this process itself when 1). SIGTERM
    drains each one (app/main.py); returns the exit code."""
    config = uvicorn.Config(
        "app.__main__:worker_app",
        factory=True,
        workers=workers,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=log_config(settings),
        # One access line per request comes from app/middleware.py, with the request's ID,
        # model and image count; uvicorn's own would be a second one.
        access_log=False,
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout_s),
    )
    if workers == 1:
        _Server(config).run()
        return 0
    # Metrics of all workers in one scrape (app/metrics.py); a fresh folder per run, so
    # counters never carry over from an earlier one.
    with tempfile.TemporaryDirectory(prefix="mnist-serve-metrics-") as metrics_dir:
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", metrics_dir)
        supervisor = Multiprocess(config, sockets=[config.bind_socket()])
        supervisor.run()
    failed = any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes)
    return STARTUP_FAILURE if failed else 0


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
    configure_logging(settings)
    return serve(settings, settings.worker_count(device.type))


if __name__ == "__main__":
    sys.exit(main())
