"""Run the service as a real process and wait until it serves: for tests, benchmarks and
evaluations that talk to it over HTTP (127.0.0.1 only)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    process: subprocess.Popen[str]

    def output(self) -> str:
        """Everything the process printed, when it went to a pipe (call after it exits)."""
        out, _ = self.process.communicate(timeout=30)
        return out or ""

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM (the service drains), then SIGKILL if it has not exited in ``timeout``."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def spawn(
    env: dict[str, str] | None = None,
    *,
    port: int | None = None,
    command: Sequence[str] | None = None,
    output: IO[str] | int = subprocess.PIPE,
) -> Server:
    """Start ``python -m app`` (or ``command``) on a loopback port; returns at once.

    ``env`` is added to this process's environment; host and port are set here. The
    process's output goes to ``output``: a pipe read by :meth:`Server.output`, a file, or
    ``subprocess.DEVNULL`` (a pipe nobody reads can fill up and stall a long run).
    """
    port = port or free_port()
    full_env = {
        **os.environ,
        "MNIST_SERVE_HOST": "127.0.0.1",
        "MNIST_SERVE_PORT": str(port),
        **(env or {}),
    }
    process = subprocess.Popen(
        list(command or [sys.executable, "-m", "app"]),
        cwd=REPO,
        env=full_env,
        stdout=output,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return Server(f"http://127.0.0.1:{port}", process)


def wait_ready(server: Server, timeout: float = 120.0, path: str = "/health/ready") -> None:
    """Return once ``path`` answers 200; raise if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            output = server.output() if server.process.stdout is not None else ""
            raise RuntimeError(f"server exited {server.process.returncode}:\n{output}")
        try:
            with urllib.request.urlopen(server.url + path, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass  # not listening yet, or 503
        time.sleep(0.02)
    raise TimeoutError(f"server not ready within {timeout}s")


@contextmanager
def running_server(
    env: dict[str, str] | None = None, output: IO[str] | int = subprocess.PIPE
) -> Iterator[Server]:
    """A ready server process, stopped afterwards."""
    server = spawn(env, output=output)
    try:
        wait_ready(server)
        yield server
    finally:
        server.stop()
        if server.process.stdout is not None:
            server.process.communicate()
