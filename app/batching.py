"""Adaptive batching: the one place where requests become a batch for the model.

Each model has a worker thread. A request hands it a *job*: ``prepare`` (the request's
images as arrays: decode and fit, :meth:`Pipeline.prepare`), ``encode`` (the request's
probabilities -> its response) and its image count. The worker takes everything queued, up
to ``max_batch_size`` images, prepares each job, transforms all their arrays at once, runs
one forward pass and hands each job its rows. A lone request goes straight through with no
added wait; under load, batches form from what arrived while the previous batch ran.

The rules: a request's images are never split across passes (a job that does not fit leads
the next batch); a job whose ``prepare`` or ``encode`` fails (a corrupt upload) fails alone;
a job whose request was cancelled while it waited is skipped; ``stop`` finishes what is
queued.

Admission (app/admission.py): :meth:`BatchEngine.submit` refuses a job that would take the
queue past its bound (503, :class:`~app.errors.Overloaded`), and with ``timeout_s`` a job
still queued when it expires is answered 503 (:class:`~app.errors.QueueTimeout`) without
doing its work. A job counts as queued until its batch starts.

The worker also decodes and encodes so that a request is *one* thread hop (event loop ->
worker -> event loop) instead of three (docs/decisions/0005-adaptive-batching-one-thread-hop.md).
Pillow, numpy and torch release the GIL while they work, so the event loop keeps parsing.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

from app.admission import Admission, QueueObserver
from app.context import note_job
from app.errors import QueueTimeout

log = logging.getLogger("app.batching")

R = TypeVar("R")


class Stages(Protocol):
    """What the engine runs once per batch (app/pipeline.py's :class:`Pipeline`)."""

    name: str

    def transform(self, arrays: Sequence[np.ndarray]) -> torch.Tensor: ...

    def forward(self, inputs: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class Output:
    """One request's rows of a batch: its model inputs and their probabilities."""

    inputs: torch.Tensor
    probabilities: torch.Tensor


@dataclass
class _Job:
    prepare: Callable[[], list[np.ndarray]]
    encode: Callable[[Output], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    size: int  # images in the job, known before it is prepared
    queued_at: float
    # The submitting request's context: its work on the worker thread logs with its ID.
    context: contextvars.Context
    arrays: list[np.ndarray] | None = None
    _claimed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def claim(self) -> bool:
        """True once: for the worker taking the job or the timeout answering it, whichever
        comes first."""
        with self._lock:
            first, self._claimed = not self._claimed, True
            return first

    def resolve(self, result: object) -> None:
        self.loop.call_soon_threadsafe(_resolve, self.future, result, False)

    def fail(self, exc: BaseException) -> None:
        self.loop.call_soon_threadsafe(_resolve, self.future, exc, True)


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
        stages: Stages,
        max_batch_size: int,
        max_batch_delay_ms: float = 0.0,
        *,
        max_queue_images: int | None = 0,
        timeout_s: float = 0.0,
        observer: QueueObserver | None = None,
    ) -> None:
        self.stages = stages
        self.max_batch_size = max_batch_size
        self.max_delay = max_batch_delay_ms / 1000.0
        # The automatic bound lets at least one full batch wait.
        self.admission = Admission(stages.name, max_queue_images, observer, max_batch_size)
        self.timeout_s = timeout_s
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"batch-{stages.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish what is queued, then end the worker."""
        self._queue.put(None)
        self._thread.join(timeout=30)

    async def submit(
        self, prepare: Callable[[], list[np.ndarray]], encode: Callable[[Output], R], size: int
    ) -> R:
        """``encode`` of the outputs for the ``size`` arrays ``prepare`` returns, batched
        with whatever else is queued. Both run on the worker thread, in the caller's
        context; an exception from either is raised here, and :class:`Overloaded` when the
        queue is full or the job times out."""
        note_job(self.stages.name, size)
        self.admission.reserve(size)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        context = contextvars.copy_context()
        job = _Job(prepare, encode, future, loop, size, time.monotonic(), context)
        if self.timeout_s:
            timer = loop.call_later(self.timeout_s, self._expire, job)
            future.add_done_callback(lambda _: timer.cancel())
        self._queue.put(job)
        return await future

    def refuse_if_full(self) -> None:
        """Raise :class:`Overloaded` if even a one-image request would not be admitted now:
        routes call it before reading a request's body, so a full queue costs no upload."""
        self.admission.check(1)

    def _expire(self, job: _Job) -> None:
        """On the event loop, at the job's deadline: answer it if it is still queued."""
        if job.claim():
            self.admission.release(job.size, time.monotonic() - job.queued_at)
            self._time_out(job)

    def _time_out(self, job: _Job) -> None:
        self.admission.timed_out()
        waited = time.monotonic() - job.queued_at
        job.fail(
            QueueTimeout(
                f"the request waited {waited:.1f} s in the queue of {self.stages.name!r}, "
                f"past the timeout of {self.timeout_s:g} s; retry later",
                self.admission.retry_after(),
            )
        )

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

    def _process(self, jobs: list[_Job]) -> None:
        started = time.monotonic()
        ready: list[_Job] = []
        for job in jobs:
            if not job.claim():  # its timeout answered it already
                continue
            waited = started - job.queued_at
            self.admission.release(job.size, waited)
            if job.future.done():  # cancelled while queued: skip its work
                continue
            if self.timeout_s and waited > self.timeout_s:  # the loop's timer was late
                self._time_out(job)
                continue
            try:
                job.arrays = job.context.run(job.prepare)
            except Exception as exc:  # e.g. a corrupt upload: this job only
                job.fail(exc)
                continue
            ready.append(job)
        if not ready:
            return
        sizes = [len(job.arrays or ()) for job in ready]
        try:
            inputs = self.stages.transform([a for job in ready for a in job.arrays or ()])
            probabilities = self.stages.forward(inputs)
        except Exception as exc:
            log.exception("transform or forward pass failed for %s", self.stages.name)
            for job in ready:
                job.fail(exc)
            return
        start = 0
        for job, n in zip(ready, sizes, strict=True):
            job.arrays = None
            rows = slice(start, start + n)
            start += n
            try:
                result = job.context.run(job.encode, Output(inputs[rows], probabilities[rows]))
            except Exception as exc:
                job.fail(exc)
            else:
                job.resolve(result)
        self.admission.ran(sum(sizes), time.monotonic() - started)

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
                log.exception("batch worker error for %s", self.stages.name)
                for j in jobs:
                    j.fail(exc)
