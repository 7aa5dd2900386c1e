"""Prometheus metrics, one registry per app instance."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


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
        self.models_loaded = Gauge("mnist_serve_models_loaded", "Models loaded", registry=r)
        self.device = Info("mnist_serve_device", "Device the models run on", registry=r)

    def observe_batch(self, model: str, images: int, seconds: float) -> None:
        self.batch_size.labels(model).observe(images)
        self.inference_latency.labels(model).observe(seconds)
        self.images.labels(model).inc(images)
