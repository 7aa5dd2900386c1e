"""Admission control: how many images may wait for one model in one worker process.

An unbounded queue answers nobody quickly under overload: every request is accepted and the
last ones wait for everything ahead of them, long after their clients gave up. So the
images waiting are bounded (``MNIST_SERVE_MAX_QUEUE_IMAGES``); a request that would pass the
bound is refused at once with 503 and a ``Retry-After`` estimated from the queue and the
rate the worker has been achieving. A request is always admitted when nothing waits, so
one request larger than the bound is still served.

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


class QueueObserver(Protocol):
    """Where queue depth, waits and refusals are reported (app/metrics.py's Metrics)."""

    def queue_depth(self, model: str, images: int) -> None: ...

    def queue_wait(self, model: str, seconds: float) -> None: ...

    def rejected(self, model: str, reason: str) -> None: ...


class Admission:
    """The images queued for one model; ``max_images`` 0 means unbounded."""

    def __init__(self, model: str, max_images: int, observer: QueueObserver | None = None) -> None:
        self.model = model
        self.max_images = max_images
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
            return self._images / self._seconds if self._seconds > 0 else None

    def retry_after(self) -> int:
        """Whole seconds until the current queue is worked off, at least 1."""
        rate = self.rate()
        if rate is None:
            return 1
        return max(1, math.ceil(self._queued / rate))

    def check(self, images: int) -> None:
        """Raise :class:`Overloaded` if ``images`` more would not be admitted now."""
        with self._lock:
            full = self._full(images)
        if full:
            self._refuse()

    def reserve(self, images: int) -> None:
        """Admit ``images`` into the queue, or raise :class:`Overloaded`."""
        with self._lock:
            full = self._full(images)
            if not full:
                self._queued += images
                self._report()
        if full:
            self._refuse()

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

    def _full(self, images: int) -> bool:
        return self.max_images > 0 and self._queued > 0 and self._queued + images > self.max_images

    def _report(self) -> None:
        # Under the lock, so the gauge sees the changes in the order they happened.
        if self.observer is not None:
            self.observer.queue_depth(self.model, self._queued)

    def _refuse(self) -> None:
        if self.observer is not None:
            self.observer.rejected(self.model, "queue_full")
        raise Overloaded(
            f"model {self.model!r} is overloaded: {self._queued:,} images are queued "
            f"(at most {self.max_images:,}); retry later",
            self.retry_after(),
        )
