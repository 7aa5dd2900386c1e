"""Prometheus metrics, one registry per app instance.

With several worker processes (``MNIST_SERVE_WORKERS`` > 1) each process counts on its own;
``python -m app`` then sets ``PROMETHEUS_MULTIPROC_DIR`` before the workers start, so
prometheus-client keeps the values in files there and a scrape of any worker reports the
sum over all of them.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# Queue waits: from nothing (an idle worker) to past any sensible request timeout.
_WAIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                 10.0, 30.0)  # fmt: skip
REJECT_REASONS = ("queue_full", "timeout")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "mnist_serve_requests", "HTTP requests by route, method and status",
            ["route", "method", "status"], registry=r,
        )  # fmt: skip
        self.request_latency = Histogram(
            "mnist_serve_request_duration_seconds", "HTTP request latency",
            ["route"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.inference_latency = Histogram(
            "mnist_serve_inference_duration_seconds", "Time of one forward pass (batch)",
            ["model"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "mnist_serve_batch_size", "Images per forward pass",
            ["model"], buckets=_BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.images = Counter(
            "mnist_serve_images_classified", "Images classified", ["model"], registry=r
        )
        # Every worker loads the same models: the most any worker reports is the figure.
        self.models_loaded = Gauge(
            "mnist_serve_models_loaded", "Models loaded", registry=r, multiprocess_mode="max"
        )
        self.device = Gauge(
            "mnist_serve_device_info", "Device the models run on (value 1)",
            ["device"], registry=r, multiprocess_mode="max",
        )  # fmt: skip
        # Each worker process queues on its own: the service's queue is the sum over the
        # live ones (the autoscaling query in deploy/ sums a pod's series too).
        self.queue_images = Gauge(
            "mnist_serve_queue_images", "Images admitted and waiting for a batch",
            ["model"], registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.queue_waits = Histogram(
            "mnist_serve_queue_wait_seconds", "Time a request waited for its batch to start",
            ["model"], buckets=_WAIT_BUCKETS, registry=r,
        )  # fmt: skip
        self.rejected_requests = Counter(
            "mnist_serve_rejected_requests", "Requests refused with 503 by admission control",
            ["model", "reason"], registry=r,
        )  # fmt: skip
        self._depth: dict[str, Gauge] = {}
        self._waits: dict[str, Histogram] = {}

    def render(self) -> bytes:
        """The Prometheus text exposition: of this process, or summed over all workers."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)

    def add_model(self, model: str) -> None:
        """Series of a newly loaded model, at zero, so queries see them before any load."""
        # Every request updates these twice: the labelled series are looked up once.
        self._depth[model] = self.queue_images.labels(model)
        self._depth[model].set(0)
        self._waits[model] = self.queue_waits.labels(model)
        for reason in REJECT_REASONS:
            self.rejected_requests.labels(model, reason)

    # app/admission.py's QueueObserver
    def queue_depth(self, model: str, images: int) -> None:
        self._depth[model].set(images)

    def queue_wait(self, model: str, seconds: float) -> None:
        self._waits[model].observe(seconds)

    def rejected(self, model: str, reason: str) -> None:
        self.rejected_requests.labels(model, reason).inc()

    def observe_batch(self, model: str, images: int, seconds: float) -> None:
        self.batch_size.labels(model).observe(images)
        self.inference_latency.labels(model).observe(seconds)
        self.images.labels(model).inc(images)
