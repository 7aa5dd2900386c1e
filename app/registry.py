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
from training.device import resolve_device
from training.loader import LoadedModel, ModelLoadError, discover, load_model

log = logging.getLogger("app")


class StartupError(RuntimeError):
    """The service cannot start; the message is the one line an operator needs."""


@dataclass
class ServingModel:
    loaded: LoadedModel
    engine: BatchEngine

    @property
    def name(self) -> str:
        return self.loaded.name


@dataclass
class Registry:
    settings: Settings
    metrics: Metrics
    models: dict[str, ServingModel] = field(default_factory=dict)
    ready: bool = False
    draining: bool = False
    error: str | None = None

    def not_ready_reason(self) -> str | None:
        if self.draining:
            return "shutting down"
        if self.error:
            # The reason names folders on disk: it goes to the log, not to clients.
            return "start-up failed (the reason is in the server log)"
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

    def load(self) -> None:
        """Load, warm up and start every configured model; raise :class:`StartupError`."""
        s = self.settings
        try:
            device = resolve_device(s.device)
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        # On a GPU too: decoding's tensor work and the transform run on the CPU.
        torch.set_num_threads(s.threads_per_worker(device.type))
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
            spec = loaded.manifest.input
            shape = (spec.channels, spec.height, spec.width)
            model: Forward = loaded.model
            if s.optimize and device.type == "cpu":
                example = torch.randn(8, *shape, generator=torch.Generator().manual_seed(0))
                model = optimized_for_cpu(loaded.model, example, name)
            elif s.optimize and device.type == "cuda":
                model = graphed_for_cuda(loaded.model, shape, batch, device, name)
            engine = BatchEngine(
                loaded, batch, s.max_batch_delay_ms, self.metrics.observe_batch, model
            )
            with torch.inference_mode():  # warm-up: first-call allocations happen now
                for size in (1, batch):
                    model(torch.zeros(size, *shape, device=device))
            engine.start()
            self.models[name] = ServingModel(loaded, engine)
            log.info("loaded %s (%s) on %s", name, loaded.manifest.architecture.name, device)
        self.metrics.models_loaded.set(len(self.models))
        self.metrics.device.labels(str(device)).set(1)
        self.ready = True

    def close(self) -> None:
        self.ready = False
        for model in self.models.values():
            model.engine.stop()
