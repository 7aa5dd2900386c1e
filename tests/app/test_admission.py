"""Admission control (app/admission.py) on the batch engine with fake stages: the queue bound,
the large request that is never starved, the timeout, Retry-After, and the request context
the worker runs a job in; and the routes' refusal of a full queue before a body is read."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from app import context
from app.admission import Admission
from app.batching import BatchEngine, Output
from app.config import Settings
from app.errors import Overloaded, QueueTimeout
from app.main import create_app
from tests.app.test_batching import FakeStages, ids, images
from tests.helpers import MODELS_DIR


class Blocking(FakeStages):
    """Fake stages whose forward pass waits for ``gate`` and says when it has started."""

    def __init__(self) -> None:
        super().__init__()
        self.gate.clear()
        self.entered = threading.Event()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        self.entered.set()
        return super().forward(inputs)


class Recorder:
    """A QueueObserver that keeps what it was told."""

    def __init__(self) -> None:
        self.depths: list[int] = []
        self.waits: list[float] = []
        self.rejections: list[str] = []
        self.rejected_by: list[str] = []  # the thread that refused
        self.refused = threading.Event()

    def queue_depth(self, model: str, images: int) -> None:
        self.depths.append(images)

    def queue_wait(self, model: str, seconds: float) -> None:
        self.waits.append(seconds)

    def rejected(self, model: str, reason: str) -> None:
        self.rejections.append(reason)
        self.rejected_by.append(threading.current_thread().name)
        self.refused.set()


class Tracked:
    """A one-image job's prepare() that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> list[np.ndarray]:
        self.calls += 1
        return images(1)()


async def busy(engine: BatchEngine, stages: Blocking, size: int) -> asyncio.Future[Any]:
    """Start the engine and one job of ``size`` images that holds the worker in its
    forward pass until ``stages.gate`` opens: what is submitted next waits in the queue."""
    first = asyncio.ensure_future(engine.submit(images(*range(100, 100 + size)), ids, size))
    await asyncio.sleep(0)  # the job is queued
    engine.start()
    await asyncio.to_thread(stages.entered.wait, 10)
    return first


def test_a_job_past_the_bound_is_refused_at_once_and_the_rest_are_served() -> None:
    stages, seen = Blocking(), Recorder()
    engine = BatchEngine(stages, max_batch_size=8, max_queue_images=5, observer=seen)

    async def scenario() -> list[Any]:
        first = await busy(engine, stages, 2)  # taken by the worker: not queued any more
        b = asyncio.ensure_future(engine.submit(images(1, 2, 3), ids, 3))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as refused:
            await engine.submit(images(4, 5, 6), ids, 3)  # 3 + 3 > 5
        assert refused.value.retry_after >= 1
        assert refused.value.status_code == 503
        assert "at most 5" in refused.value.detail
        d = asyncio.ensure_future(engine.submit(images(7, 8), ids, 2))  # 3 + 2 fits
        await asyncio.sleep(0)
        assert engine.admission.queued == 5
        stages.gate.set()
        return await asyncio.gather(first, b, d)

    try:
        assert asyncio.run(scenario()) == [[100, 101], [1, 2, 3], [7, 8]]
    finally:
        engine.stop()
    assert seen.rejections == ["queue_full"]
    assert seen.depths[-1] == 0
    assert max(seen.depths) == 5
    assert len(seen.waits) == 3  # one per job that left the queue
    assert stages.batches == [[100, 101], [1, 2, 3, 7, 8]]


def test_a_full_queue_is_checked_before_a_body_is_read() -> None:
    stages = Blocking()
    engine = BatchEngine(stages, max_batch_size=8, max_queue_images=4)

    async def scenario() -> None:
        first = await busy(engine, stages, 1)
        engine.admission.check(4)  # the queue is empty: anything goes
        queued = asyncio.ensure_future(engine.submit(images(1, 2, 3, 4), ids, 4))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            engine.admission.check(1)
        assert engine.admission.queued == 4  # a check reserves nothing
        stages.gate.set()
        await asyncio.gather(first, queued)

    try:
        asyncio.run(scenario())
    finally:
        engine.stop()


def test_a_request_larger_than_the_bound_is_admitted_when_nothing_waits() -> None:
    stages = FakeStages()
    engine = BatchEngine(stages, max_batch_size=4, max_queue_images=3)

    async def scenario() -> list[Any]:
        big = asyncio.ensure_future(engine.submit(images(*range(10)), ids, 10))
        await asyncio.sleep(0)  # queued; the worker has not started
        with pytest.raises(Overloaded):
            await engine.submit(images(42), ids, 1)  # something waits now
        engine.start()
        return [await big]

    try:
        assert asyncio.run(scenario()) == [list(range(10))]
    finally:
        engine.stop()


def test_unbounded_with_zero() -> None:
    stages = FakeStages()
    engine = BatchEngine(stages, max_batch_size=4, max_queue_images=0)

    async def scenario() -> list[Any]:
        tasks = [asyncio.ensure_future(engine.submit(images(i), ids, 1)) for i in range(50)]
        await asyncio.sleep(0)
        assert engine.admission.queued == 50
        engine.start()
        return await asyncio.gather(*tasks)

    try:
        assert asyncio.run(scenario()) == [[i] for i in range(50)]
    finally:
        engine.stop()


def test_a_job_still_queued_at_its_timeout_is_answered_503_without_its_work() -> None:
    stages, seen = Blocking(), Recorder()
    engine = BatchEngine(stages, max_batch_size=8, timeout_s=0.05, observer=seen)
    tracked = Tracked()

    async def scenario() -> Any:
        first = await busy(engine, stages, 1)
        with pytest.raises(QueueTimeout) as expired:
            await engine.submit(tracked, ids, 1)  # answered while the worker is still busy
        assert expired.value.status_code == 503
        assert expired.value.retry_after >= 1
        assert engine.admission.queued == 0  # its images left the queue with the answer
        stages.gate.set()
        return await first

    try:
        assert asyncio.run(scenario()) == [100]
    finally:
        engine.stop()
    assert tracked.calls == 0  # a refused job is never prepared
    assert seen.rejections == ["timeout"]
    assert stages.batches == [[100]]


def test_the_worker_refuses_an_expired_job_when_the_event_loop_was_late() -> None:
    stages, seen = Blocking(), Recorder()
    engine = BatchEngine(stages, max_batch_size=8, timeout_s=0.05, observer=seen)
    tracked = Tracked()

    async def scenario() -> Any:
        first = await busy(engine, stages, 1)
        late = asyncio.ensure_future(engine.submit(tracked, ids, 1))
        await asyncio.sleep(0)
        # The event loop is blocked past the job's deadline, so its timer cannot fire; then
        # the worker finishes its batch and takes the expired job.
        time.sleep(0.1)
        stages.gate.set()
        assert seen.refused.wait(10)
        with pytest.raises(QueueTimeout):
            await late
        return await first

    try:
        assert asyncio.run(scenario()) == [100]
    finally:
        engine.stop()
    assert tracked.calls == 0  # a refused job is never prepared
    assert seen.rejections == ["timeout"]  # once: the late timer finds it answered
    assert seen.rejected_by == ["batch-fake"]


def test_retry_after_is_the_queue_over_the_measured_rate() -> None:
    admission = Admission("m", max_images=10_000)
    assert admission.rate() is None
    admission.reserve(2_500)
    assert admission.retry_after() == 1  # nothing measured yet
    admission.ran(1_000, 1.0)  # 1,000 images/s
    assert admission.rate() == pytest.approx(1_000)
    assert admission.retry_after() == 3  # 2,500 images at 1,000/s: 2.5 s, rounded up
    for _ in range(30):  # the worker slows down to 250 images/s: the estimate follows
        admission.ran(250, 1.0)
    assert admission.rate() == pytest.approx(250, rel=0.01)
    assert admission.retry_after() == 10
    admission.release(2_500, 0.0)
    assert admission.retry_after() == 1


def test_the_worker_runs_a_job_in_the_context_of_its_request() -> None:
    stages = FakeStages()
    engine = BatchEngine(stages, max_batch_size=8)
    seen: list[str | None] = []

    def prepare() -> list[np.ndarray]:
        seen.append(context.current_request_id())
        return images(1)()

    def encode(output: Output) -> list[int]:
        seen.append(context.current_request_id())
        return ids(output)

    async def request(rid: str) -> Any:
        context.current.set(context.RequestInfo(rid))
        return await engine.submit(prepare, encode, 1)

    async def scenario() -> list[Any]:
        # Each task has its own copy of the context, as each HTTP request does.
        tasks = [asyncio.ensure_future(request(rid)) for rid in ("req-a", "req-b")]
        await asyncio.sleep(0)
        engine.start()
        return await asyncio.gather(*tasks)

    try:
        assert asyncio.run(scenario()) == [[1], [1]]
    finally:
        engine.stop()
    assert seen == ["req-a", "req-b", "req-a", "req-b"]  # both prepared, then both encoded
    assert context.current_request_id() is None  # the worker thread's own context is clean


def test_the_automatic_bound_is_a_second_of_work_at_the_measured_rate() -> None:
    admission = Admission("m", max_images=None, min_images=64)
    assert admission.limit() == 16_000  # the starting figure, before any batch has run
    admission.ran(200, 1.0)  # large photos: 200 a second
    assert admission.limit() == 200
    admission.reserve(150)
    with pytest.raises(Overloaded) as refused:
        admission.reserve(64)  # 150 + 64 > 200
    assert "at most 200" in refused.value.detail
    admission.reserve(50)
    for _ in range(40):  # slower still: the bound never drops below one full batch
        admission.ran(10, 1.0)
    assert admission.limit() == 64
    assert Admission("m", max_images=0).limit() == 0  # 0: unbounded, whatever the rate


@pytest.mark.parametrize("path", ["/predict", "/v2/models/mnist-lenet5/infer"])
def test_routes_refuse_a_full_queue_without_reading_the_body(path: str) -> None:
    """/predict and V2 alike: with the queue full, the 503 comes before any of the upload
    is read, in the route's error shape, with Retry-After."""
    settings = Settings(
        models_dir=MODELS_DIR, models=["mnist-lenet5"], device="cpu", torch_threads=1,
        max_queue_images=4,
    )  # fmt: skip
    read: list[bytes] = []

    def body() -> Iterator[bytes]:
        for chunk in (b"--b\r\n", b"never looked at"):
            read.append(chunk)
            yield chunk

    with TestClient(create_app(settings)) as client:
        admission = client.app.state.registry.get("mnist-lenet5").engine.admission  # type: ignore[attr-defined]
        admission.reserve(4)  # four images waiting: the bound is reached
        try:
            headers = {"content-type": "multipart/form-data; boundary=b"}
            refused = client.post(path, content=body(), headers=headers)
        finally:
            admission.release(4, 0.0)
        assert refused.status_code == 503
        assert int(refused.headers["retry-after"]) >= 1
        key = "error" if path.startswith("/v2/") else "detail"
        assert "queue" in refused.json()[key]
        assert read == []
