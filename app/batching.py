"""Adaptive batching: the one place where requests become a batch for the model.

Each model has a worker thread. Requests put their (already preprocessed) inputs on a
queue and await a future. The worker takes everything queued, up to ``max_batch_size``
images, and runs one forward pass: a lone request goes straight through with no added
wait, and under load batches form from what arrived while the previous batch ran. A
request's images are never split across passes. Torch never runs on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from training.loader import LoadedModel

log = logging.getLogger("app.batching")


@dataclass
class _Job:
    inputs: torch.Tensor  # (n, C, H, W) on the CPU
    future: asyncio.Future[torch.Tensor]
    loop: asyncio.AbstractEventLoop


def _resolve(future: asyncio.Future[torch.Tensor], result: torch.Tensor | BaseException) -> None:
    if future.done():  # the client went away and the request was cancelled
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


class BatchEngine:
    def __init__(
        self,
        loaded: LoadedModel,
        max_batch_size: int,
        max_batch_delay_ms: float = 0.0,
        observe: Callable[[str, int, float], None] | None = None,
    ) -> None:
        self.loaded = loaded
        self.max_batch_size = max_batch_size
        self.max_delay = max_batch_delay_ms / 1000.0
        self._observe = observe
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"batch-{loaded.name}", daemon=True)
        self._pinned = loaded.device.type == "cuda"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish what is queued, then end the worker."""
        self._queue.put(None)
        self._thread.join(timeout=30)

    async def predict(self, inputs: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(n, classes)`` for inputs ``(n, C, H, W)``."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[torch.Tensor] = loop.create_future()
        self._queue.put(_Job(inputs, future, loop))
        return await future

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """One forward pass on the model's device -> softmax probabilities on the CPU."""
        started = time.perf_counter()
        with torch.inference_mode():
            x = inputs
            if self._pinned:
                x = x.pin_memory().to(self.loaded.device, non_blocking=True)
            probs = torch.softmax(self.loaded.model(x).float(), dim=1).cpu()
        if self._observe is not None:
            self._observe(self.loaded.name, int(inputs.shape[0]), time.perf_counter() - started)
        return probs

    def _collect(self, first: _Job) -> tuple[list[_Job], _Job | None, bool]:
        """Gather queued jobs after ``first`` up to the batch size.

        Returns the batch, a job that did not fit (it leads the next batch) and whether
        the stop sentinel was seen.
        """
        jobs, size = [first], len(first.inputs)
        deadline = time.monotonic() + self.max_delay
        while size < self.max_batch_size:
            try:
                if self.max_delay:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    nxt = self._queue.get(timeout=remaining)
                else:
                    nxt = self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                return jobs, None, True
            if size + len(nxt.inputs) > self.max_batch_size:
                return jobs, nxt, False
            jobs.append(nxt)
            size += len(nxt.inputs)
        return jobs, None, False

    def _run(self) -> None:
        carry: _Job | None = None
        stopping = False
        while True:
            job = carry if carry is not None else (None if stopping else self._queue.get())
            carry = None
            if job is None:
                return
            jobs, carry, seen_stop = self._collect(job)
            stopping = stopping or seen_stop
            try:
                inputs = jobs[0].inputs if len(jobs) == 1 else torch.cat([j.inputs for j in jobs])
                probs = self.forward(inputs)
            except Exception as exc:
                log.exception("forward pass failed for %s", self.loaded.name)
                for j in jobs:
                    j.loop.call_soon_threadsafe(_resolve, j.future, exc)
                continue
            start = 0
            for j in jobs:
                n = len(j.inputs)
                j.loop.call_soon_threadsafe(_resolve, j.future, probs[start : start + n])
                start += n
