"""Faults against real ``python -m app`` processes: graceful SIGTERM under load, SIGKILL
and restart, start-up with damaged model folders, clients that vanish mid-request.

No timing is asserted: waits have generous limits that only catch hangs; the measured
restart time is printed (``pytest -s``) and recorded in docs/reliability.md.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from tests.helpers import MODELS_DIR, Server, encode, free_port, spawn, wait_ready
from training.datasets import Split

pytestmark = pytest.mark.slow

EXIT_LIMIT = 60.0  # seconds a failing start may take before we call it a hang
READY_LIMIT = 60.0
# A drained shutdown exits 0 (app.__main__ keeps uvicorn from re-raising the SIGTERM).
GRACEFUL_EXIT = (0,)


@pytest.fixture(scope="module")
def uploads(mnist_test: Split) -> list[tuple[bytes, str]]:
    return [(encode(mnist_test.images[i]), str(int(mnist_test.labels[i]))) for i in range(64)]


# ---------------------------------------------------------------------------- SIGTERM


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_under_load_loses_no_accepted_request(
    uploads: list[tuple[bytes, str]], workers: int
) -> None:
    """Readiness turns 503 first; the load (like a load balancer would) stops sending when
    it sees that; every request sent before gets its full, correct answer; a slow upload
    still in flight when the listener closes completes; the shutdown is graceful."""
    drain_delay = 2.0
    server = spawn(
        {
            "MNIST_SERVE_DRAIN_DELAY_S": str(drain_delay),
            "MNIST_SERVE_DRAIN_TIMEOUT_S": "30",
            "MNIST_SERVE_WORKERS": str(workers),
        }
    )
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    stop = threading.Event()
    probe_log: list[str] = []

    def note(outcome: str) -> None:
        with lock:
            outcomes[outcome] += 1

    def load(seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for _ in range(2000):  # bounded
                if stop.is_set():
                    return
                picks = rng.choice(len(uploads), 8, replace=False)
                files = [("file", (f"{i}.png", uploads[i][0], "image/png")) for i in picks]
                try:
                    response = http.post("/predict", files=files)
                except httpx.HTTPError as exc:
                    note(f"error {type(exc).__name__}")
                    continue
                if response.status_code != 200:
                    note(f"status {response.status_code}")
                    continue
                labels = [p["label"] for p in response.json()["predictions"]]
                note("ok" if len(labels) == 8 else "short answer")

    def probe() -> None:
        """A load balancer's readiness probe: on the first 503 it takes the server out."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                code = httpx.get(f"{server.url}/health/ready", timeout=5).status_code
                probe_log.append(str(code))
                if code == 503:
                    stop.set()
            except httpx.TransportError as exc:
                probe_log.append(type(exc).__name__)
                return
            time.sleep(0.05)

    def trickle() -> Iterator[bytes]:
        """One upload whose body takes longer than the drain delay to arrive."""
        boundary = "trickle"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="t.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        yield head
        body = uploads[0][0]
        pieces = 10
        for k in range(pieces):
            time.sleep(drain_delay * 1.5 / pieces)
            yield body[k * len(body) // pieces : (k + 1) * len(body) // pieces]
        yield f"\r\n--{boundary}--\r\n".encode()

    slow_result: list[object] = []

    def slow_upload() -> None:
        try:
            response = httpx.post(
                f"{server.url}/predict",
                content=trickle(),
                headers={"content-type": "multipart/form-data; boundary=trickle"},
                timeout=60,
            )
            slow_result.append(response.status_code)
            slow_result.append(response.json()["predictions"][0]["label"])
        except httpx.HTTPError as exc:
            slow_result.append(type(exc).__name__)

    try:
        wait_ready(server)
        threads = [threading.Thread(target=load, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while sum(outcomes.values()) < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert outcomes["ok"] >= 30, outcomes
        slow = threading.Thread(target=slow_upload)
        slow.start()
        server.process.send_signal(signal.SIGTERM)
        prober = threading.Thread(target=probe)
        prober.start()
        for t in [*threads, slow, prober]:
            t.join(timeout=120)
        code = server.process.wait(timeout=60)
    finally:
        stop.set()
        if server.process.poll() is None:
            server.process.kill()
        output = server.output()
    assert code in GRACEFUL_EXIT, output
    assert "Application shutdown complete" in output
    assert set(outcomes) == {"ok"}, outcomes
    # the probe saw 503 while the listener was still open, before connections were refused
    assert "503" in probe_log, probe_log
    assert "200" not in probe_log[probe_log.index("503") :]
    assert slow_result == [200, uploads[0][1]], slow_result
    assert "Traceback" not in output


# ---------------------------------------------------------------------------- SIGKILL


def test_sigkill_and_restart_comes_back_ready(uploads: list[tuple[bytes, str]]) -> None:
    port = free_port()
    first = spawn(port=port)
    try:
        wait_ready(first, READY_LIMIT)
        first.process.kill()
        assert first.process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if first.process.poll() is None:
            first.process.kill()
        first.process.communicate()
    started = time.monotonic()
    second = spawn(port=port)  # same port: nothing left over blocks it
    try:
        wait_ready(second, READY_LIMIT)
        print(f"\nrestart after SIGKILL: ready in {time.monotonic() - started:.2f} s")
        data, label = uploads[1]
        response = httpx.post(f"{second.url}/predict", files={"file": ("d.png", data)}, timeout=30)
        assert response.json()["predictions"][0]["label"] == label
    finally:
        second.process.terminate()
        second.process.wait(timeout=30)
        second.process.communicate()


# ---------------------------------------------------------------------------- bad start-ups


def _copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(MODELS_DIR / "mnist-lenet5", tmp_path / "mnist-lenet5"))


def _manifest(folder: Path, edit: Callable[[dict[str, object]], None]) -> None:
    data = json.loads((folder / "model.json").read_text())
    edit(data)
    (folder / "model.json").write_text(json.dumps(data))


def _missing(tmp_path: Path) -> None:
    (_copy(tmp_path) / "model.safetensors").unlink()


def _truncated(tmp_path: Path) -> None:
    weights = _copy(tmp_path) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _truncated_rehashed(tmp_path: Path) -> None:
    """Truncated, and the manifest's checksum updated to match: the reader must refuse it."""
    folder = _copy(tmp_path)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()[: weights.stat().st_size // 2]
    weights.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    _manifest(folder, lambda m: m["weights"].__setitem__("sha256", digest))  # type: ignore[attr-defined]


def _tampered(tmp_path: Path) -> None:
    weights = _copy(tmp_path) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))


def _unknown_architecture(tmp_path: Path) -> None:
    _manifest(_copy(tmp_path), lambda m: m["architecture"].__setitem__("name", "resnet9000"))  # type: ignore[attr-defined]


def _empty(tmp_path: Path) -> None:
    pass


BAD_STARTS = [
    ("missing-weights", _missing, {}, "missing weights file model.safetensors"),
    ("truncated-weights", _truncated, {}, "checksum mismatch"),
    ("truncated-weights-rehashed", _truncated_rehashed, {}, "unreadable weights file"),
    ("tampered-weights", _tampered, {}, "checksum mismatch"),
    ("unknown-architecture", _unknown_architecture, {}, "resnet9000"),
    ("empty-models-folder", _empty, {}, "no model folders"),
    ("cuda-without-cuda", _empty, {"MNIST_SERVE_DEVICE": "cuda"}, "CUDA is not available"),
    (
        "models-folder-missing",
        _empty,
        {"MNIST_SERVE_MODELS_DIR": "/nonexistent/models"},
        "does not exist",
    ),
]


@pytest.mark.parametrize(
    ("damage", "env", "message"), [c[1:] for c in BAD_STARTS], ids=[c[0] for c in BAD_STARTS]
)
def test_a_bad_start_exits_non_zero_with_one_clear_line(
    tmp_path: Path, damage: Callable[[Path], None], env: dict[str, str], message: str
) -> None:
    if "MNIST_SERVE_DEVICE" in env and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    models = tmp_path / "models"
    models.mkdir()
    damage(models)
    server = spawn({"MNIST_SERVE_MODELS_DIR": str(models), **env})
    try:
        code = server.process.wait(timeout=EXIT_LIMIT)
    finally:
        if server.process.poll() is None:
            server.process.kill()
    output = server.output()
    assert code != 0, output
    lines = [line for line in output.splitlines() if message in line]
    assert len(lines) == 1, output  # the reason, once, on one line
    assert "error" in lines[0].lower()
    assert "Traceback" not in output
    if damage is not _empty:
        assert "mnist-lenet5" in lines[0]  # names the model folder


# ---------------------------------------------------------------------------- vanishing clients


def _raw(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _send_and_vanish(server: Server, payload: bytes, read: int = 0) -> None:
    with socket.create_connection(_raw(server.url), timeout=60) as s:
        s.sendall(payload)
        if read:
            s.recv(read)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    # closing with linger 0 sends a RST: the rudest way to go


def _multipart(files: list[bytes]) -> bytes:
    boundary = "vanish"
    body = (
        b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{i}.png"\r\n'
            f"Content-Type: image/png\r\n\r\n".encode()
            + data
            + b"\r\n"
            for i, data in enumerate(files)
        )
        + f"--{boundary}--\r\n".encode()
    )
    head = (
        "POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


def test_clients_that_vanish_harm_nothing(uploads: list[tuple[bytes, str]]) -> None:
    full = _multipart([data for data, _ in uploads[:8]])
    server = spawn()
    try:
        wait_ready(server)
        for _ in range(10):
            _send_and_vanish(server, full[: len(full) // 3])  # mid-upload
            _send_and_vanish(server, full)  # before reading the answer
            _send_and_vanish(server, full, read=16)  # mid-response
            _send_and_vanish(
                server, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Le"
            )  # mid-headers
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert http.get("/health/ready").status_code == 200
            files = [("file", (f"{i}.png", d, "image/png")) for i, (d, _) in enumerate(uploads)]
            predictions = http.post("/predict", files=files).json()["predictions"]
            assert [p["label"] for p in predictions] == [label for _, label in uploads]
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(timeout=60)
    finally:
        if server.process.poll() is None:
            server.process.kill()
        output = server.output()
    assert code in GRACEFUL_EXIT, output
    assert "Traceback" not in output
    assert "ERROR" not in output
