"""Helpers shared by the tests: image encoding, free ports, a real server process."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image

from app import testing
from app.testing import REPO, Server, free_port, wait_ready

MODELS_DIR = REPO / "models"
__all__ = ["MODELS_DIR", "REPO", "Server", "encode", "free_port", "running_server", "spawn",
           "wait_ready"]  # fmt: skip


def encode(image: Image.Image | np.ndarray | torch.Tensor, fmt: str = "PNG", **kw: object) -> bytes:
    """Encode an image (PIL, HxW uint8 array or (1,H,W)/(H,W) uint8 tensor) to bytes."""
    if isinstance(image, torch.Tensor):
        image = image.squeeze(0).numpy()
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


# Tests run the service on the CPU, one process, one torch thread, unless they say otherwise.
TEST_ENV = {
    "MNIST_SERVE_DEVICE": "cpu",
    "MNIST_SERVE_TORCH_THREADS": "1",
    "MNIST_SERVE_WORKERS": "1",
    "MNIST_SERVE_ACCESS_LOG": "false",
}


def spawn(env: dict[str, str] | None = None, port: int | None = None) -> Server:
    """Start ``python -m app`` with :data:`TEST_ENV` and ``env`` on a free loopback port;
    returns at once."""
    return testing.spawn({**TEST_ENV, **(env or {})}, port=port)


@contextmanager
def running_server(env: dict[str, str] | None = None) -> Iterator[Server]:
    """A ready server process with :data:`TEST_ENV` and ``env``, stopped afterwards."""
    with testing.running_server({**TEST_ENV, **(env or {})}) as server:
        yield server
