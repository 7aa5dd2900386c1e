"""The batch worker runs the model's transform once over the uint8 arrays of every job in a
batch (app/batching.py): the results must be those of preprocessing each job on its own."""

from __future__ import annotations

import asyncio

import numpy as np
import torch

from app.batching import BatchEngine
from tests.helpers import MODELS_DIR
from training.loader import load_model


def test_jobs_returning_arrays_match_jobs_returning_inputs(mnist_test) -> None:
    torch.set_num_threads(1)
    loaded = load_model(MODELS_DIR / "mnist-lenet5", "cpu")
    pre = loaded.preprocessor
    rng = np.random.default_rng(3)
    jobs: list[list[np.ndarray]] = [
        [mnist_test.images[i, 0].numpy() for i in range(k, k + n)]
        for k, n in [(0, 1), (1, 3), (4, 1), (5, 2)]
    ]
    jobs.insert(
        2, [rng.integers(0, 256, (40, 30), dtype=np.uint8), mnist_test.images[9, 0].numpy()]
    )
    with torch.inference_mode():
        expected = [torch.softmax(loaded.model(pre.from_arrays(arrs)), 1) for arrs in jobs]

    engine = BatchEngine(loaded, max_batch_size=64)

    async def run() -> list[torch.Tensor]:
        def fail() -> list[np.ndarray]:
            raise ValueError("corrupt upload")

        def job(arrs: list[np.ndarray], as_arrays: bool) -> object:
            return engine.submit(
                lambda: arrs if as_arrays else pre.from_arrays(arrs), lambda p: p, len(arrs)
            )

        calls = [job(arrs, i % 2 == 1) for i, arrs in enumerate(jobs)]
        calls.insert(1, engine.submit(fail, lambda p: p, 1))
        tasks = [asyncio.ensure_future(c) for c in calls]  # type: ignore[call-overload]
        await asyncio.sleep(0)  # every job is queued before the worker starts: one batch
        engine.start()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(results.pop(1), ValueError)  # fails alone
        return results  # type: ignore[return-value]

    try:
        got = asyncio.run(run())
    finally:
        engine.stop()
    for g, e in zip(got, expected, strict=True):
        assert torch.allclose(g, e, atol=1e-6)
