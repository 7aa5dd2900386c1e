"""Admission control: how many images may wait for one model in one worker process.

An unbounded queue answers nobody quickly under overload: every request is accepted and the
last ones wait for everything ahead of them, long after their clients gave up. So the
images waiting are bounded; a request that would pass the bound is refused at once with 503
and a ``Retry-After`` estimated from the queue and the rate the worker has been achieving. A
request is always admitted when nothing waits, so one request larger than the bound is
still served.

The bound is ``MNIST_SERVE_MAX_QUEUE_IMAGES`` when set, else one second of work at the
rate the worker achieves: a 28x28 digit takes a sixtieth of a millisecond, a phone photo a
hundred times longer, so a fixed count is a second for one and minutes for the other
(docs/decisions/0010-admission-control.md).

Jobs enter on the event loop (:meth:`Admission.reserve`) and leave on the batch worker
thread or a timeout timer (:meth:`Admission.release`): the count is guarded by a lock.
"""

from __future__ import annotations

import math
import threading
from typing import Protocol

from app.errors import Overloaded

# Smoothing of the measured rate: each batch moves the estimate 20% of the way, so a few
# batches of a new kind of upload (large photos instead of 28x28 digits) are enough.
_RATE_WEIGHT = 0.2
# The rate assumed before the worker has run: mnist-lenet5 on 28x28 PNG digits in 64-image
# batches, one worker on one core of a 2-core EPYC VM (bench/queue_rate.py: ~20,000 images
# per CPU second for the worker; 16,445 images/s end to end with HTTP on the same core).
INITIAL_RATE = 16_000.0
# The automatic bound: this much work at the measured rate.
QUEUE_SECONDS = 1.0


class QueueObserver(Protocol):
    """Where queue depth, waits and refusals are reported (app/metrics.py's Metrics)."""

    def queue_depth(self, model: str, images: int) -> None: ...

    def queue_wait(self, model: str, seconds: float) -> None: ...

    def rejected(self, model: str, reason: str) -> None: ...


class Admission:
    """The images queued for one model: at most ``max_images`` (0: unbounded; None: one
    second of work at the measured rate, never less than ``min_images``)."""

    def __init__(
        self,
        model: str,
        max_images: int | None,
        observer: QueueObserver | None = None,
        min_images: int = 1,
    ) -> None:
        self.model = model
        self.max_images = max_images
        self.min_images = min_images
        self.observer = observer
        self._lock = threading.Lock()
        self._queued = 0
        # Exponentially weighted images and busy seconds per batch; their ratio is the rate.
        self._images = 0.0
        self._seconds = 0.0

    @property
    def queued(self) -> int:
        return self._queued

    def rate(self) -> float | None:
        """Images per second of work the worker has been achieving, once it has run."""
        with self._lock:
            return self._rate()

    def _rate(self) -> float | None:
        return self._images / self._seconds if self._seconds > 0 else None

    def limit(self) -> int:
        """The bound now (0: none)."""
        with self._lock:
            return self._limit()

    def _limit(self) -> int:
        if self.max_images is not None:
            return self.max_images
        rate = self._rate() or INITIAL_RATE
        return max(self.min_images, round(rate * QUEUE_SECONDS))

    def retry_after(self) -> int:
        """Whole seconds until the current queue is worked off, at least 1."""
        rate = self.rate() or INITIAL_RATE
        return max(1, math.ceil(self._queued / rate))

    def check(self, images: int) -> None:
        """Raise :class:`Overloaded` if ``images`` more would not be admitted now."""
        with self._lock:
            limit = self._limit()
            full = self._full(images, limit)
        if full:
            self._refuse(limit)

    def reserve(self, images: int) -> None:
        """Admit ``images`` into the queue, or raise :class:`Overloaded`."""
        with self._lock:
            limit = self._limit()
            full = self._full(images, limit)
            if not full:
                self._queued += images
                self._report()
        if full:
            self._refuse(limit)

    def release(self, images: int, waited: float) -> None:
        """``images`` left the queue after ``waited`` seconds (taken by the worker, or
        answered by a timeout)."""
        with self._lock:
            self._queued -= images
            self._report()
        if self.observer is not None:
            self.observer.queue_wait(self.model, waited)

    def timed_out(self) -> None:
        if self.observer is not None:
            self.observer.rejected(self.model, "timeout")

    def ran(self, images: int, seconds: float) -> None:
        """The worker did ``images`` images' work in ``seconds``."""
        if images <= 0 or seconds <= 0:
            return
        with self._lock:
            if self._seconds == 0:
                self._images, self._seconds = float(images), seconds
            else:
                self._images += _RATE_WEIGHT * (images - self._images)
                self._seconds += _RATE_WEIGHT * (seconds - self._seconds)

    def _full(self, images: int, limit: int) -> bool:
        return limit > 0 and self._queued > 0 and self._queued + images > limit

    def _report(self) -> None:
        # Under the lock, so the gauge sees the changes in the order they happened.
        if self.observer is not None:
            self.observer.queue_depth(self.model, self._queued)

    def _refuse(self, limit: int) -> None:
        if self.observer is not None:
            self.observer.rejected(self.model, "queue_full")
        raise Overloaded(
            f"model {self.model!r} is overloaded: {self._queued:,} images are queued "
            f"(at most {limit:,}); retry later",
            self.retry_after(),
        )
