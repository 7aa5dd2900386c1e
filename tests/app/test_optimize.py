"""app/optimize.py: the forward pass the service runs (ONNX Runtime on the CPU, CUDA graphs
on a GPU)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from app.optimize import (
    TOLERANCE,
    GraphedForward,
    OnnxForward,
    bucket_sizes,
    graphed_for_cuda,
    optimized_for_cpu,
)
from training.loader import discover, load_model

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.mark.parametrize("folder", discover(MODELS), ids=lambda p: p.name)
def test_every_shipped_model_is_optimized_and_agrees_with_eager(folder: Path) -> None:
    loaded = load_model(folder)
    spec = loaded.manifest.input
    shape = (spec.channels, spec.height, spec.width)
    forward = optimized_for_cpu(loaded.model, torch.randn(8, *shape), loaded.name)
    assert isinstance(forward, OnnxForward)
    x = torch.randn(300, *shape, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        # Other batch sizes than the check's, past the batch limit too; a strided view.
        for batch in (x[:64], x[:1], x[:7], x, x[::2]):
            want, got = loaded.model(batch), forward(batch)
            assert got.shape == want.shape
            assert torch.allclose(got, want, rtol=0, atol=TOLERANCE)
            assert torch.equal(got.argmax(1), want.argmax(1))


class _Different(nn.Module):
    """Exports fine, but is not what the eager module computes (a stand-in for a
    runtime that computes something else)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1.0


def test_a_model_that_cannot_be_exported_is_served_eager(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    model = nn.Linear(3, 2).eval()
    with caplog.at_level(logging.WARNING, logger="app"):
        assert optimized_for_cpu(model, torch.ones(2, 3), "odd") is model
    assert (
        "odd: serving the eager model (ONNX export or Runtime failed: unsupported operator)"
        in caplog.text
    )


def test_an_optimized_model_that_differs_is_not_served(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _Different()
    monkeypatch.setattr(OnnxForward, "__call__", lambda self, x: x)
    with caplog.at_level(logging.WARNING, logger="app"):
        assert optimized_for_cpu(model, torch.ones(2, 3), "drifty") is model
    assert "drifty: serving the eager model (the optimized one differs by 1)" in caplog.text


def test_the_onnx_forward_keeps_torch_threads_and_does_not_spin() -> None:
    """ONNX Runtime gets as many intra-op threads as torch has (the worker's share of the
    cores), and they sleep when idle instead of spinning on a core the event loop needs."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        forward = OnnxForward(nn.Linear(3, 2).eval(), torch.ones(4, 3))
    finally:
        torch.set_num_threads(before)
    options = forward._session.get_session_options()
    assert options.intra_op_num_threads == 2
    assert options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_the_onnx_forward_writes_nothing_to_the_home_folder(tmp_path: Path) -> None:
    """In a fresh server process (ONNX Runtime sets up once per process): making a session leaves
    HOME and XDG_CACHE_HOME empty (no telemetry device ID) and logs no warning, as a
    read-only container needs."""
    home = tmp_path / "home"
    home.mkdir()
    script = (
        "import torch\n"
        "from torch import nn\n"
        "from app.config import Settings\n"
        "from app.optimize import OnnxForward\n"
        "from app.runtime import configure_process\n"
        "configure_process(Settings(), torch.device('cpu'))\n"
        "OnnxForward(nn.Linear(3, 2).eval(), torch.ones(4, 3))(torch.ones(1, 3))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env |= {"HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")}
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=MODELS.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert list(home.rglob("*")) == []
    assert "telemetry" not in done.stderr.lower()


@pytest.mark.parametrize("optimize", [True, False])
def test_the_setting_picks_what_the_engine_runs(optimize: bool) -> None:
    from app.config import Settings
    from app.metrics import Metrics
    from app.registry import Registry

    settings = Settings(models_dir=MODELS, models=["mnist-lenet5"], device="cpu", optimize=optimize)
    registry = Registry(settings, Metrics())
    registry.load(torch.device(settings.device))
    try:
        serving = registry.get("mnist-lenet5")
        if optimize:
            assert isinstance(serving.pipeline.model, OnnxForward)
        else:
            assert serving.pipeline.model is serving.loaded.model
    finally:
        registry.close()


def test_graph_buckets_cover_every_batch_size_up_to_the_limit() -> None:
    assert bucket_sizes(1) == [1]
    assert bucket_sizes(64) == [1, 2, 4, 8, 16, 32, 64]
    assert bucket_sizes(100) == [1, 2, 4, 8, 16, 32, 64, 100]
    for limit in (1, 2, 3, 64, 100, 256):
        sizes = bucket_sizes(limit)
        assert sizes == sorted(set(sizes))
        assert sizes[-1] == limit
        # The bucket a batch runs in is at most twice its size.
        for n in range(1, limit + 1):
            assert n <= min(s for s in sizes if s >= n) < 2 * n


@pytest.mark.gpu
@pytest.mark.parametrize("folder", discover(MODELS), ids=lambda p: p.name)
def test_every_shipped_model_replays_as_cuda_graphs_and_agrees_with_eager(folder: Path) -> None:
    device = torch.device("cuda")
    loaded = load_model(folder, device)
    spec = loaded.manifest.input
    shape = (spec.channels, spec.height, spec.width)
    forward = graphed_for_cuda(loaded.model, shape, 256, device, loaded.name)
    assert isinstance(forward, GraphedForward)
    generator = torch.Generator().manual_seed(2)
    with torch.inference_mode():
        # Sizes between buckets, and a large batch before a small one (the small one's
        # padding rows then hold the large one's images).
        for n in (256, 5, 1, 100, 64, 2, 300):  # 300: past the graphs, eager
            x = torch.randn(n, *shape, generator=generator).to(device)
            want = loaded.model(x)
            got = forward(x)
            assert got.shape == want.shape
            assert torch.allclose(got, want, rtol=0, atol=TOLERANCE)
            assert torch.equal(got.argmax(1), want.argmax(1))


@pytest.mark.gpu
def test_the_service_on_cuda_runs_cuda_graphs() -> None:
    from app.config import Settings
    from app.metrics import Metrics
    from app.registry import Registry

    settings = Settings(models_dir=MODELS, models=["mnist-lenet5"], device="cuda")
    registry = Registry(settings, Metrics())
    registry.load(torch.device(settings.device))
    try:
        serving = registry.get("mnist-lenet5")
        engine = serving.engine
        assert isinstance(serving.pipeline.model, GraphedForward)
        assert serving.pipeline.model.sizes[-1] == engine.max_batch_size
    finally:
        registry.close()


def test_served_convolutions_run_channels_last_on_the_cpu() -> None:
    from app.config import Settings
    from app.metrics import Metrics
    from app.registry import Registry

    settings = Settings(models_dir=MODELS, models=["mnist-lenet5"], device="cpu", optimize=False)
    registry = Registry(settings, Metrics())
    registry.load(torch.device("cpu"))
    try:
        model = registry.get("mnist-lenet5").loaded.model
        convs = [p for p in model.parameters() if p.dim() == 4]
        assert convs
        assert all(c.is_contiguous(memory_format=torch.channels_last) for c in convs)
        assert not all(c.is_contiguous() for c in convs)  # not the default layout
    finally:
        registry.close()
