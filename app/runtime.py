"""Process-wide settings, applied once at start-up (:func:`configure_process`).

Everything here changes global state of a library for the whole process, so it happens in
one place, before any model loads, rather than as a side effect of importing a module.
"""

from __future__ import annotations

import logging
import os

import torch
from PIL import Image, PngImagePlugin

from app.config import Settings

# Compressed PNG metadata (zTXt/iTXt/iCCP) is inflated while the header is read. Pillow
# allows 1 MiB per chunk and 64 MiB in all, per image; we need none of it, so the total is
# cut to 4 MiB: 64 concurrent uploads cannot make the server hold 4 GiB of comments.
PNG_TEXT_CHUNK_BYTES = 1024 * 1024
PNG_TEXT_TOTAL_BYTES = 4 * 1024 * 1024


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


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
