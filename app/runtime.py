"""Process-wide settings, applied once at start-up (:func:`configure_process`).

Everything here changes global state of a library for the whole process, so it happens in
one place, before any model loads, rather than as a side effect of importing a module.
"""

from __future__ import annotations

import logging
import logging.config
import os
from typing import Any

import torch
from PIL import Image, PngImagePlugin
from pythonjsonlogger.core import RESERVED_ATTRS

from app.config import Settings

# Compressed PNG metadata (zTXt/iTXt/iCCP) is inflated while the header is read. Pillow
# allows 1 MiB per chunk and 64 MiB in all, per image; we need none of it, so the total is
# cut to 4 MiB: 64 concurrent uploads cannot make the server hold 4 GiB of comments.
PNG_TEXT_CHUNK_BYTES = 1024 * 1024
PNG_TEXT_TOTAL_BYTES = 4 * 1024 * 1024


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message``, then the request's ID and trace id when the record
    was logged during a request (app/context.py)."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        for key in ("request_id", "trace_id"):
            value = getattr(record, key, None)
            if value is not None:
                first, newline, rest = line.partition("\n")  # before a traceback, if any
                line = f"{first} {key}={value}{newline}{rest}"
        return line


def log_config(settings: Settings) -> dict[str, Any]:
    """The ``logging.config.dictConfig`` of the whole process, uvicorn's loggers included
    (uvicorn applies it in each worker process): one handler on the root logger, the
    request context on every record, text or one JSON object per line
    (python-json-logger). Access lines come from app/middleware.py, not uvicorn."""
    fields = "%(asctime)s %(levelname)s %(name)s %(message)s"
    formatter: dict[str, Any] = (
        {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": fields,
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
            # uvicorn adds a copy of some messages with terminal colour codes.
            "reserved_attrs": [*RESERVED_ATTRS, "color_message"],
        }
        if settings.log_format == "json"
        else {"()": TextFormatter, "fmt": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    )
    level = settings.log_level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": "app.context.ContextFilter"}},
        "formatters": {"default": formatter},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "filters": ["context"],
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["default"], "level": level},
        # uvicorn's own loggers carry handlers and stop propagation unless told otherwise;
        # its access lines are off for good (app/middleware.py writes richer ones).
        "loggers": {
            "uvicorn": {"handlers": [], "propagate": True, "level": level},
            "uvicorn.error": {"handlers": [], "propagate": True, "level": level},
            "uvicorn.asgi": {"handlers": [], "propagate": True, "level": level},
            "uvicorn.access": {"handlers": [], "propagate": False},
        },
    }


def configure_logging(settings: Settings) -> None:
    logging.config.dictConfig(log_config(settings))
    # Warnings (e.g. a library's deprecation notice) go through the same handler, so in JSON
    # mode they are JSON lines too.
    logging.captureWarnings(True)


def configure_process(settings: Settings, device: torch.device) -> None:
    """Threads, Pillow's limits and ONNX Runtime's environment for this server process."""
    # On a GPU too: decoding's tensor work and the transform run on the CPU.
    torch.set_num_threads(settings.threads_per_worker(device.type))
    # decode() checks every header against the service's own, configurable pixel limit
    # before any pixel is decoded; Pillow's global bomb check would pre-empt it with a
    # vaguer message that omits the size.
    Image.MAX_IMAGE_PIXELS = None
    PngImagePlugin.MAX_TEXT_CHUNK = PNG_TEXT_CHUNK_BYTES
    PngImagePlugin.MAX_TEXT_MEMORY = PNG_TEXT_TOTAL_BYTES
    # ONNX Runtime otherwise sets up telemetry with its first session: it writes a device ID
    # under ~/.cache (and warns where it cannot, as in a read-only container). It reads this
    # when it is imported, which happens only when the first model is optimized.
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
