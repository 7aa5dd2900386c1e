"""``python -m app`` / ``mnist-serve``: start the service with settings from the environment."""

from __future__ import annotations

import logging
import math
import sys

import uvicorn
from pydantic import ValidationError

from app.config import Settings
from app.main import create_app
from training.device import DeviceError, resolve_device


def main() -> int:
    try:
        settings = Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        print(f"error: MNIST_SERVE_{field.upper()}: {first['msg']}", file=sys.stderr)
        return 2
    try:
        resolve_device(settings.device)
    except DeviceError as exc:
        print(f"error: MNIST_SERVE_DEVICE: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
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
    server = uvicorn.Server(config)
    server.run()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
