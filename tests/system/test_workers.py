"""``MNIST_SERVE_WORKERS`` > 1: several real server processes on one port."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import httpx
import pytest
from uvicorn.config import STARTUP_FAILURE

from app.config import Settings, usable_cores
from tests.helpers import encode, spawn, wait_ready

pytestmark = pytest.mark.slow


def _children(pid: int) -> set[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return {int(p) for p in text.split()}


def _serving_workers(pid: int) -> set[int]:
    """Children that run the app (not multiprocessing's resource tracker)."""
    out = set()
    for child in _children(pid):
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        if b"multiprocessing.spawn" in cmdline or b"spawn_main" in cmdline:
            out.add(child)
    return out


def test_workers_default_follows_the_device() -> None:
    s = Settings(workers=None)
    assert s.worker_count("cpu") >= 1
    assert 1 <= s.worker_count("cuda") <= 8
    assert Settings(workers=3).worker_count("cpu") == 3
    cores = usable_cores()
    assert Settings(workers=2).threads_per_worker("cpu") == max(1, cores // 2)
    assert Settings(workers=None).threads_per_worker("cpu") == 1
    gpu_workers = max(1, min(cores // 2, 8))
    assert Settings(workers=None).threads_per_worker("cuda") == max(1, cores // gpu_workers)
    assert Settings(workers=2, torch_threads=3).threads_per_worker("cuda") == 3


def test_two_workers_serve_and_drain_on_sigterm(mnist_test) -> None:
    server = spawn({"MNIST_SERVE_WORKERS": "2", "MNIST_SERVE_MODELS": "mnist-lenet5"})
    try:
        wait_ready(server, timeout=120)
        files = [("file", ("a.png", encode(mnist_test.images[0]), "image/png"))]
        for _ in range(20):
            r = httpx.post(f"{server.url}/predict", files=files, timeout=30)
            assert r.status_code == 200
            assert r.json()["predictions"][0]["label"] == str(int(mnist_test.labels[0]))
        assert len(_serving_workers(server.process.pid)) == 2
        # Whichever worker answers the scrape, it reports the requests of both.
        metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
        assert 'mnist_serve_images_classified_total{model="mnist-lenet5"} 20.0' in metrics
        assert "mnist_serve_models_loaded 1.0" in metrics
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0
    finally:
        if server.process.poll() is None:
            server.process.kill()
        server.process.communicate()


def test_a_worker_that_cannot_load_stops_the_service(tmp_path) -> None:
    server = spawn({"MNIST_SERVE_WORKERS": "2", "MNIST_SERVE_MODELS_DIR": str(tmp_path / "no")})
    try:
        code = server.process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        server.process.kill()
        raise
    out = server.output()
    assert code == STARTUP_FAILURE
    assert "does not exist" in out


def test_queue_metrics_add_up_over_workers(mnist_test) -> None:
    """Two workers, each with its own queue bound: one scrape counts every refusal and
    admitted request of both, and the queue gauge is their sum (0 once idle)."""
    import asyncio

    from tests.system.test_overload import MODEL, burst, metrics

    pngs = [encode(mnist_test.images[i]) for i in range(16)]
    env = {"MNIST_SERVE_WORKERS": "2", "MNIST_SERVE_MODELS": MODEL,
           "MNIST_SERVE_MAX_QUEUE_IMAGES": "32"}  # fmt: skip
    server = spawn(env)
    try:
        wait_ready(server, timeout=120)
        answers = asyncio.run(burst(server.url, pngs, 120, 32))
        assert {a.status for a in answers} <= {200, 503}
        shed = sum(a.status == 503 for a in answers)
        assert shed > 0
        m = metrics(server)
        model = (("model", MODEL),)
        full = (*model, ("reason", "queue_full"))
        assert m[("mnist_serve_rejected_requests_total", full)] == shed
        assert m[("mnist_serve_queue_wait_seconds_count", model)] == len(answers) - shed
        assert m[("mnist_serve_queue_images", model)] == 0
    finally:
        server.stop()
        server.process.communicate()
