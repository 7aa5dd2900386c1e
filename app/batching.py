"""Adaptive batching: the one place where requests become a batch for the model.

Each model has a worker thread. A request hands it a *job*: a ``prepare`` function (decode
and preprocess the uploads -> ``(n, C, H, W)`` inputs, or their uint8 arrays for the
model's transform) and a ``finish`` function (that request's ``(n, classes)`` probabilities
-> its response body). The worker takes everything queued, up to ``max_batch_size`` images,
runs each job's ``prepare``, runs the transform once over all the jobs' arrays, stacks the
inputs, runs one forward pass and hands each job its rows through ``finish``. A lone request goes
straight through with no added wait; under load, batches form from what arrived while the
previous batch ran. A request's images are never split across passes, and a job whose
``prepare`` fails (a corrupt upload) fails alone: the others in its batch go on.

Why the worker also decodes, preprocesses and renders: it makes the whole request *one*
thread hop (event loop -> worker -> event loop, ~10 us amortised under load) instead of
two (a thread-pool hop for decoding costs ~120 us of anyio bookkeeping on its own, which
was a fifth of a single-image request on one core; see bench/RESULTS.md). Torch and Pillow
never run on the event loop, which only parses HTTP and writes the bytes back. Pillow and
torch release the GIL while they work, so the event loop keeps parsing meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import numpy as np
import torch

from training.loader import LoadedModel

log = logging.getLogger("app.batching")

R = TypeVar("R")


# What a job's ``prepare`` returns: the ``(n, C, H, W)`` model inputs on the CPU, or the
# images as ``(H, W)`` uint8 arrays still to go through the model's transform, which the
# worker then runs once for every such job in the batch (Preprocessor.from_arrays).
Prepared = torch.Tensor | list[np.ndarray]


@dataclass
class _Job:
    prepare: Callable[[], Prepared]
    finish: Callable[[torch.Tensor], Any]  # (n, classes) probabilities -> the result
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    size: int  # images in the job, known before it is prepared
    inputs: Prepared | None = None


def _resolve(future: asyncio.Future[Any], result: object, failed: bool) -> None:
    if future.done():  # the client went away and the request was cancelled
        return
    if failed:
        assert isinstance(result, BaseException)
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
        model: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.loaded = loaded
        # What runs the forward pass: the loaded model, or an optimized form of it
        # (app/optimize.py).
        self.model = loaded.model if model is None else model
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

    async def submit(
        self,
        prepare: Callable[[], Prepared],
        finish: Callable[[torch.Tensor], R],
        size: int,
    ) -> R:
        """Run ``finish(probabilities)`` for ``size`` images from ``prepare()``, batched with
        whatever else is queued. Both functions run on the worker thread; an exception from
        either is raised here. ``prepare`` returns the inputs, or uint8 arrays for the
        model's preprocessor (see :data:`Prepared`)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.put(_Job(prepare, finish, future, loop, size))
        return await future

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """One forward pass on the model's device -> softmax probabilities on the CPU."""
        started = time.perf_counter()
        with torch.inference_mode():
            x = inputs
            if self._pinned:
                x = x.pin_memory().to(self.loaded.device, non_blocking=True)
            # .cpu() waits for the stream, so the probabilities are complete here.
            probs = torch.softmax(self.model(x).float(), dim=1).cpu()
        if self._observe is not None:
            self._observe(self.loaded.name, int(inputs.shape[0]), time.perf_counter() - started)
        return probs

    def _collect(self, first: _Job) -> tuple[list[_Job], _Job | None, bool]:
        """Gather queued jobs after ``first`` up to the batch size.

        Returns the batch, a job that did not fit (it leads the next batch) and whether
        the stop sentinel was seen.
        """
        jobs, size = [first], first.size
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
            if size + nxt.size > self.max_batch_size:
                return jobs, nxt, False
            jobs.append(nxt)
            size += nxt.size
        return jobs, None, False

    @staticmethod
    def _fail(job: _Job, exc: BaseException) -> None:
        job.loop.call_soon_threadsafe(_resolve, job.future, exc, True)

    def _process(self, jobs: list[_Job]) -> None:
        ready: list[_Job] = []
        for job in jobs:
            if job.future.done():  # cancelled while queued: skip its work
                continue
            try:
                job.inputs = job.prepare()
            except Exception as exc:  # e.g. a corrupt upload: this job only
                self._fail(job, exc)
                continue
            ready.append(job)
        ready = self._transform_arrays(ready)
        if not ready:
            return
        try:
            parts = [j.inputs for j in ready if isinstance(j.inputs, torch.Tensor)]
            inputs = parts[0] if len(parts) == 1 else torch.cat(parts)
            probs = self.forward(inputs)
        except Exception as exc:
            log.exception("forward pass failed for %s", self.loaded.name)
            for j in ready:
                self._fail(j, exc)
            return
        start = 0
        for j in ready:
            n = len(j.inputs) if j.inputs is not None else 0
            j.inputs = None
            try:
                result = j.finish(probs[start : start + n])
            except Exception as exc:
                self._fail(j, exc)
            else:
                j.loop.call_soon_threadsafe(_resolve, j.future, result, False)
            start += n

    def _transform_arrays(self, ready: list[_Job]) -> list[_Job]:
        """Jobs that returned uint8 arrays get their inputs from one
        :meth:`Preprocessor.from_arrays` call over all of them (one transform per image
        size, not per request). Returns the jobs still to run."""
        pending = [j for j in ready if isinstance(j.inputs, list)]
        if not pending:
            return ready
        lists = [cast(list[np.ndarray], j.inputs) for j in pending]
        arrays = [a for arrs in lists for a in arrs]
        try:
            inputs = self.loaded.preprocessor.from_arrays(arrays)
        except Exception as exc:
            log.exception("preprocessing failed for %s", self.loaded.name)
            for j in pending:
                self._fail(j, exc)
            return [j for j in ready if not isinstance(j.inputs, list)]
        start = 0
        for j, arrs in zip(pending, lists, strict=True):
            j.inputs = inputs[start : start + len(arrs)]
            start += len(arrs)
        return ready

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
                self._process(jobs)
            except Exception as exc:  # never let the worker die with requests waiting
                log.exception("batch worker error for %s", self.loaded.name)
                for j in jobs:
                    self._fail(j, exc)
