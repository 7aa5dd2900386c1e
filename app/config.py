"""The one settings class, read from ``MNIST_SERVE_*`` environment variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# The shipped models sit at the repository root (and at /app/models in the image).
DEFAULT_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Every knob of the service. Environment variables are the names below, upper-cased,
    prefixed ``MNIST_SERVE_`` (e.g. ``MNIST_SERVE_PORT=9000``); lists are comma-separated."""

    model_config = SettingsConfigDict(env_prefix="MNIST_SERVE_", extra="ignore")

    host: str = "127.0.0.1"  # loopback by default; the container sets 0.0.0.0
    port: int = Field(8000, ge=1, le=65535)
    models_dir: Path = DEFAULT_MODELS_DIR
    # Which model folders to load (names); empty = every folder in models_dir.
    models: Annotated[list[str], NoDecode] = Field(default_factory=list)
    default_model: str = "mnist-lenet5"
    device: str = "auto"  # auto = CUDA when available, else CPU; or cpu, cuda, cuda:N

    # Upload limits.
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1)  # 413 past this, counted as it streams
    max_files: int = Field(64, ge=1)  # parts named "file" per request
    # 25 MP takes a 4000x3000 photo (or 5000x5000 scan) and rejects decompression bombs.
    max_image_pixels: int = Field(25_000_000, ge=1)

    # Batching: everything queued (up to max_batch_size images) goes through one forward pass.
    max_batch_size: int | None = Field(None, ge=1)  # default: 64 on the CPU, 256 on a GPU
    max_batch_delay_ms: float = Field(0.0, ge=0)  # 0 = never wait for a batch to fill
    # Admission control, per model and worker process (app/admission.py): a request that
    # would put more images than this in the queue gets 503 with Retry-After at once; 0 =
    # unbounded. Default: one second of work at the rate the worker achieves, starting from
    # 16,000 (28x28 PNG digits, mnist-lenet5, 64-image batches, one core; a phone photo
    # takes ~100x longer, so the bound follows what is uploaded).
    max_queue_images: int | None = Field(None, ge=0)
    # A request still queued this many seconds after it arrived gets 503 without its work
    # being done; 0 = off.
    request_timeout_s: float = Field(0.0, ge=0)
    # torch intra-op threads per worker process (the forward pass on the CPU; the transform
    # on either device); default: the usable cores divided among the workers, which with the
    # default worker count is 1 on the CPU and 2 beside a GPU on 16 cores. One thread is the
    # right size for these models: a batch of <= 64 28x28 images is too small for a second
    # intra-op thread to pay for its hand-offs, and the cores are better spent on more
    # worker processes (each has its own event loop and GIL); see
    # docs/decisions/0007-worker-processes-and-torch-threads.md.
    torch_threads: int | None = Field(None, ge=1)
    # On the CPU, serve each model exported to ONNX and run by ONNX Runtime (a sixth of
    # torch's per-call overhead at batch 1, ~12% less per image at 64); on a GPU, as CUDA
    # graphs, one launch per pass instead of one per layer (app/optimize.py).
    optimize: bool = True
    # Server worker processes sharing the port; each loads the models and has its own batch
    # workers. Default: on the CPU one per usable core (the HTTP and decode work is
    # GIL-bound, so processes, not threads, are what scale it); on a GPU half the usable
    # cores, at most 8 (each worker holds its own CUDA context; the other cores are left to
    # decoding and the driver's threads). Set 1 for one process, as the tests do.
    workers: int | None = Field(None, ge=1)

    # Shutdown: on SIGTERM readiness turns 503 at once; after drain_delay_s the listener
    # closes; requests in flight get up to drain_timeout_s to finish.
    drain_delay_s: float = Field(0.0, ge=0)
    drain_timeout_s: float = Field(20.0, ge=0)

    # Optional API key (Authorization: Bearer KEY or X-API-Key: KEY) for /predict and /models;
    # health, metrics and docs stay open for probes. Off when unset.
    api_key: SecretStr | None = None
    # CORS: origins allowed to call the API from a browser; empty = CORS off.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # The browser demo at GET / (app/static); off = browsers get the JSON index too.
    demo: bool = True

    log_level: str = "info"
    # text: one line per record for people; json: one JSON object per line, uvicorn's too.
    log_format: Literal["text", "json"] = "text"
    access_log: bool = True  # one line per request: method, path, status, time, model, images

    _split = field_validator("models", "cors_origins", mode="before")(_split_csv)

    def batch_size_for(self, device_type: str) -> int:
        if self.max_batch_size is not None:
            return self.max_batch_size
        return 256 if device_type == "cuda" else 64

    def worker_count(self, device_type: str) -> int:
        if self.workers is not None:
            return self.workers
        cores = usable_cores()
        return max(1, min(cores // 2, 8)) if device_type == "cuda" else cores

    def threads_per_worker(self, device_type: str) -> int:
        if self.torch_threads is not None:
            return self.torch_threads
        return max(1, usable_cores() // self.worker_count(device_type))


def usable_cores() -> int:
    """Cores this process may run on (taskset, cgroup cpusets), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
