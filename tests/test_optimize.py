"""app/optimize.py: the CPU forward pass the service runs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from app.optimize import TOLERANCE, optimized_for_cpu
from training.loader import discover, load_model

MODELS = Path(__file__).resolve().parent.parent / "models"


@pytest.mark.parametrize("folder", discover(MODELS), ids=lambda p: p.name)
def test_every_shipped_model_is_optimized_and_agrees_with_eager(folder: Path) -> None:
    loaded = load_model(folder)
    spec = loaded.manifest.input
    shape = (spec.channels, spec.height, spec.width)
    forward = optimized_for_cpu(loaded.model, torch.randn(8, *shape), loaded.name)
    assert isinstance(forward, torch.jit.ScriptModule)
    x = torch.randn(64, *shape, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        for batch in (x, x[:1], x[:7]):  # other batch sizes than the check's
            want, got = loaded.model(batch), forward(batch)
            assert got.shape == want.shape
            assert torch.allclose(got, want, rtol=0, atol=TOLERANCE)
            assert torch.equal(got.argmax(1), want.argmax(1))


class _Unscriptable(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(x.numpy() * 2)  # numpy: TorchScript cannot compile it


class _Different(nn.Module):
    """Scripts fine, but is not what the eager module computes (a stand-in for a
    miscompilation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1.0


def test_a_model_that_cannot_be_scripted_is_served_eager(
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = _Unscriptable()
    with caplog.at_level(logging.WARNING, logger="app"):
        assert optimized_for_cpu(model, torch.ones(2, 3), "odd") is model
    assert "odd: serving the eager model (TorchScript failed" in caplog.text


def test_an_optimized_model_that_differs_is_not_served(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _Different()
    monkeypatch.setattr(torch.jit, "optimize_for_inference", lambda m: lambda x: x)
    with caplog.at_level(logging.WARNING, logger="app"):
        assert optimized_for_cpu(model, torch.ones(2, 3), "drifty") is model
    assert "drifty: serving the eager model (the optimized one differs by 1)" in caplog.text


@pytest.mark.parametrize("optimize", [True, False])
def test_the_setting_picks_what_the_engine_runs(optimize: bool) -> None:
    from app.config import Settings
    from app.metrics import Metrics
    from app.registry import Registry

    settings = Settings(models_dir=MODELS, models=["mnist-lenet5"], device="cpu", optimize=optimize)
    registry = Registry(settings, Metrics())
    registry.load()
    try:
        serving = registry.get("mnist-lenet5")
        if optimize:
            assert isinstance(serving.engine.model, torch.jit.ScriptModule)
        else:
            assert serving.engine.model is serving.loaded.model
    finally:
        registry.close()
