"""Helpers shared by the tests: image encoding, free ports, a real server process."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO / "models"


def encode(image: Image.Image | np.ndarray | torch.Tensor, fmt: str = "PNG", **kw: object) -> bytes:
    """Encode an image (PIL, HxW uint8 array or (1,H,W)/(H,W) uint8 tensor) to bytes."""
    if isinstance(image, torch.Tensor):
        image = image.squeeze(0).numpy()
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    process: subprocess.Popen[str]

    def output(self) -> str:
        """Everything the process printed (call after it has exited)."""
        out, _ = self.process.communicate(timeout=30)
        return out


def spawn(env: dict[str, str] | None = None, port: int | None = None) -> Server:
    """Start ``python -m app`` on a free loopback port; returns at once."""
    port = port or free_port()
    full_env = {
        **os.environ,
        "MNIST_SERVE_HOST": "127.0.0.1",
        "MNIST_SERVE_PORT": str(port),
        "MNIST_SERVE_DEVICE": "cpu",
        "MNIST_SERVE_TORCH_THREADS": "1",
        "MNIST_SERVE_WORKERS": "1",  # the default is one per core; tests that want more say so
        "MNIST_SERVE_ACCESS_LOG": "false",
        **(env or {}),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "app"],
        cwd=REPO,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return Server(f"http://127.0.0.1:{port}", process)


def wait_ready(server: Server, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited {server.process.returncode}:\n{server.output()}")
        try:
            if httpx.get(f"{server.url}/health/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"server not ready within {timeout}s")


@contextmanager
def running_server(env: dict[str, str] | None = None) -> Iterator[Server]:
    """A ready server process, terminated (SIGTERM, then SIGKILL) afterwards."""
    server = spawn(env)
    try:
        wait_ready(server)
        yield server
    finally:
        if server.process.poll() is None:
            server.process.terminate()
            try:
                server.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.process.kill()
        server.process.communicate()
