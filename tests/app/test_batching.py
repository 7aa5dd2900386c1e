"""The batch engine's rules (app/batching.py), on fake stages, and the real pipeline's
batches against per-request preprocessing."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np
import pytest
import torch

from app.batching import BatchEngine, Output
from app.pipeline import Pipeline
from tests.helpers import MODELS_DIR
from training.loader import load_model


class FakeStages:
    """Each array is one image holding its id; the forward pass records the batch."""

    name = "fake"

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()

    def transform(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        return torch.tensor([[float(a[0])] for a in arrays]).reshape(len(arrays), 1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        self.gate.wait(10)
        self.batches.append([int(v) for v in inputs[:, 0].tolist()])
        return inputs * 10


def images(*ids: int) -> Callable[[], list[np.ndarray]]:
    return lambda: [np.array([i]) for i in ids]


def ids(output: Output) -> list[int]:
    return [int(v) for v in output.probabilities[:, 0].div(10).tolist()]


async def queued(engine: BatchEngine, *jobs: Awaitable[Any]) -> list[Any]:
    """Every job queued before the worker starts, so batches form from the whole queue."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    await asyncio.sleep(0)  # one turn of the loop: each task puts its job on the queue
    engine.start()
    return await asyncio.gather(*tasks, return_exceptions=True)


def run(engine: BatchEngine, make: Callable[[], Awaitable[list[Any]]]) -> list[Any]:
    try:
        return asyncio.run(make())  # type: ignore[arg-type]
    finally:
        engine.stop()


def test_batches_fill_to_the_cap_and_a_job_that_does_not_fit_leads_the_next() -> None:
    stages = FakeStages()
    engine = BatchEngine(stages, max_batch_size=4)
    results = run(
        engine,
        lambda: queued(
            engine,
            engine.submit(images(1, 2, 3), ids, 3),
            engine.submit(images(4), ids, 1),
            engine.submit(images(5, 6), ids, 2),  # does not fit beside 1-4
            engine.submit(images(7, 8), ids, 2),
            engine.submit(images(9), ids, 1),  # does not fit beside 5-8
        ),
    )
    assert results == [[1, 2, 3], [4], [5, 6], [7, 8], [9]]
    assert stages.batches == [[1, 2, 3, 4], [5, 6, 7, 8], [9]]


def test_a_requests_images_are_never_split() -> None:
    stages = FakeStages()
    engine = BatchEngine(stages, max_batch_size=4)
    results = run(
        engine,
        lambda: queued(
            engine,
            engine.submit(images(1, 2), ids, 2),
            engine.submit(images(3, 4, 5), ids, 3),
            engine.submit(images(6, 7, 8, 9, 10, 11), ids, 6),  # over the cap: runs alone
        ),
    )
    assert results == [[1, 2], [3, 4, 5], [6, 7, 8, 9, 10, 11]]
    assert stages.batches == [[1, 2], [3, 4, 5], [6, 7, 8, 9, 10, 11]]


def test_a_failing_job_fails_alone() -> None:
    stages = FakeStages()
    engine = BatchEngine(stages, max_batch_size=8)

    def corrupt() -> list[np.ndarray]:
        raise ValueError("corrupt upload")

    def bad_encoder(output: Output) -> list[int]:
        raise KeyError("encoder")

    results = run(
        engine,
        lambda: queued(
            engine,
            engine.submit(images(1), ids, 1),
            engine.submit(corrupt, ids, 1),
            engine.submit(images(2), bad_encoder, 1),
            engine.submit(images(3, 4), ids, 2),
        ),
    )
    assert results[0] == [1]
    assert isinstance(results[1], ValueError)
    assert isinstance(results[2], KeyError)
    assert results[3] == [3, 4]
    assert stages.batches == [[1, 2, 3, 4]]


def test_a_cancelled_job_is_skipped() -> None:
    stages = FakeStages()
    engine = BatchEngine(stages, max_batch_size=8)
    prepared: list[str] = []

    def tracked(name: str, *image_ids: int) -> Callable[[], list[np.ndarray]]:
        def prepare() -> list[np.ndarray]:
            prepared.append(name)
            return images(*image_ids)()

        return prepare

    async def scenario() -> list[Any]:
        kept = asyncio.ensure_future(engine.submit(tracked("kept", 1), ids, 1))
        gone = asyncio.ensure_future(engine.submit(tracked("gone", 2), ids, 1))
        await asyncio.sleep(0)  # both queued
        gone.cancel()  # the client went away while it waited
        await asyncio.sleep(0)
        engine.start()
        return [await kept, gone.cancelled()]

    assert run(engine, scenario) == [[1], True]
    assert prepared == ["kept"]
    assert stages.batches == [[1]]


def test_stop_finishes_what_is_queued() -> None:
    stages = FakeStages()
    stages.gate.clear()  # the first batch blocks in its forward pass
    engine = BatchEngine(stages, max_batch_size=1)

    async def scenario() -> list[Any]:
        tasks = [asyncio.ensure_future(engine.submit(images(i), ids, 1)) for i in (1, 2, 3)]
        await asyncio.sleep(0)
        engine.start()
        stopping = asyncio.ensure_future(asyncio.to_thread(engine.stop))
        stages.gate.set()
        await stopping
        return await asyncio.gather(*tasks)

    assert asyncio.run(scenario()) == [[1], [2], [3]]
    assert stages.batches == [[1], [2], [3]]


@pytest.mark.parametrize("include_tensor_inputs", [False, True])
def test_one_batch_gives_what_each_request_gives_alone(mnist_test, include_tensor_inputs) -> None:
    """The transform runs once over every request of a batch (uint8 images of several sizes,
    and model inputs already transformed): each request's probabilities are those of
    preprocessing it on its own."""
    torch.set_num_threads(1)
    loaded = load_model(MODELS_DIR / "mnist-lenet5", "cpu")
    pipeline = Pipeline(loaded, loaded.model, max_pixels=1_000_000)
    pre = loaded.preprocessor
    rng = np.random.default_rng(3)
    jobs: list[list[np.ndarray]] = [
        [mnist_test.images[i, 0].numpy() for i in range(k, k + n)]
        for k, n in [(0, 1), (1, 3), (4, 1), (5, 2)]
    ]
    jobs.insert(
        2, [rng.integers(0, 256, (40, 30), dtype=np.uint8), mnist_test.images[9, 0].numpy()]
    )
    if include_tensor_inputs:
        jobs.append(list(pre.from_arrays([mnist_test.images[12, 0].numpy()]).numpy()))
    with torch.inference_mode():
        expected = [torch.softmax(loaded.model(pipeline.transform(arrs)), 1) for arrs in jobs]

    engine = BatchEngine(pipeline, max_batch_size=64)

    def probabilities(output: Output) -> torch.Tensor:
        return output.probabilities

    got = run(
        engine,
        lambda: queued(
            engine, *(engine.submit(lambda a=a: a, probabilities, len(a)) for a in jobs)
        ),
    )
    for g, e in zip(got, expected, strict=True):
        assert torch.allclose(g, e, atol=1e-6)
