"""The loaded models and the service's readiness, kept in app state."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from app.batching import BatchEngine
from app.config import Settings
from app.errors import ModelNotFound, NotReady
from app.metrics import Metrics
from app.optimize import Forward, graphed_for_cuda, optimized_for_cpu
from app.pipeline import Pipeline
from training.loader import LoadedModel, ModelLoadError, discover, load_model

log = logging.getLogger("app")


class StartupError(RuntimeError):
    """The service cannot start; the message is the one line an operator needs."""


@dataclass
class ServingModel:
    pipeline: Pipeline
    engine: BatchEngine

    @property
    def name(self) -> str:
        return self.pipeline.name

    @property
    def loaded(self) -> LoadedModel:
        return self.pipeline.loaded


@dataclass
class Registry:
    settings: Settings
    metrics: Metrics
    models: dict[str, ServingModel] = field(default_factory=dict)
    ready: bool = False
    draining: bool = False

    def not_ready_reason(self) -> str | None:
        if self.draining:
            return "shutting down"
        if not self.ready:
            return "models are loading"
        return None

    def get(self, name: str | None) -> ServingModel:
        reason = self.not_ready_reason()
        if reason is not None and not self.draining:
            raise NotReady(f"not ready: {reason}")
        name = name or self.settings.default_model
        try:
            return self.models[name]
        except KeyError:
            known = ", ".join(sorted(self.models))
            raise ModelNotFound(f"unknown model {name!r} (loaded: {known})") from None

    def load(self, device: torch.device) -> None:
        """Load, warm up and start every configured model on ``device``; raise
        :class:`StartupError`."""
        s = self.settings
        if not s.models_dir.is_dir():
            raise StartupError(f"models folder {s.models_dir} does not exist")
        folders = {p.name: p for p in discover(s.models_dir)}
        wanted = s.models or sorted(folders)
        if not wanted:
            raise StartupError(f"no model folders (with model.json) in {s.models_dir}")
        missing = [n for n in wanted if n not in folders]
        if missing:
            raise StartupError(f"model(s) {', '.join(missing)} not found in {s.models_dir}")
        if s.default_model not in wanted:
            raise StartupError(
                f"default model {s.default_model!r} is not among the models to load "
                f"({', '.join(wanted)}): set MNIST_SERVE_DEFAULT_MODEL"
            )
        batch = s.batch_size_for(device.type)
        for name in wanted:
            try:
                loaded = load_model(folders[name], device)
            except ModelLoadError as exc:
                raise StartupError(str(exc)) from None
            if loaded.name != name:
                raise StartupError(
                    f"model folder {folders[name]}: manifest name {loaded.name!r} "
                    "differs from the folder name"
                )
            forward = self._forward(loaded, batch)
            pipeline = Pipeline(loaded, forward, s.max_image_pixels, self.metrics.observe_batch)
            engine = BatchEngine(
                pipeline, batch, s.max_batch_delay_ms, max_queue_images=s.max_queue_images,
                timeout_s=s.request_timeout_s, observer=self.metrics,
            )  # fmt: skip
            self.metrics.add_model(name)
            engine.start()
            self.models[name] = ServingModel(pipeline, engine)
            log.info("loaded %s (%s) on %s", name, loaded.manifest.architecture.name, device)
        self.metrics.models_loaded.set(len(self.models))
        self.metrics.device.labels(str(device)).set(1)
        self.ready = True

    def _forward(self, loaded: LoadedModel, batch: int) -> Forward:
        """What runs ``loaded``'s forward pass: its optimized form for the device unless
        that is off, warmed up, so first-call allocations happen now."""
        spec, device, model = loaded.manifest.input, loaded.device, loaded.model
        shape = (spec.channels, spec.height, spec.width)
        forward: Forward = model
        if device.type == "cpu":
            # Convolution weights in channels-last order: oneDNN then runs the convolutions
            # and pooling in NHWC, ~1.4x faster for LeNet-5 at batch 64 (eager serving).
            model.to(memory_format=torch.channels_last)
            if self.settings.optimize:
                example = torch.randn(8, *shape, generator=torch.Generator().manual_seed(0))
                forward = optimized_for_cpu(model, example, loaded.name)
        elif self.settings.optimize:
            forward = graphed_for_cuda(model, shape, batch, device, loaded.name)
        with torch.inference_mode():
            for size in (1, batch):
                forward(torch.zeros(size, *shape, device=device))
        return forward

    def close(self) -> None:
        self.ready = False
        for model in self.models.values():
            model.engine.stop()
