"""Temperature scaling: the figures, the fit, the validation split, and the one forward path."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from app.optimize import TOLERANCE, OnnxForward, optimized_for_cpu
from tests.helpers import MODELS_DIR
from training.calibration import figures, fit_temperature, fold_temperature
from training.cli import main as cli_main
from training.datasets import Split, validation_split
from training.loader import load_model, sha256_file
from training.manifest import MANIFEST_NAME, WEIGHTS_NAME, Manifest
from training.train import TrainConfig, run


def _logits_and_labels(n: int, temperature: float, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Logits whose softmax at ``temperature`` is exactly the law the labels are drawn from."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 10, generator=g, dtype=torch.float64) * 3
    labels = torch.multinomial((logits / temperature).softmax(1), 1, generator=g).squeeze(1)
    return logits, labels


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.0])
def test_fit_recovers_the_temperature_that_generated_the_labels(true_t: float) -> None:
    logits, labels = _logits_and_labels(20_000, true_t)
    assert fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.05)


def test_a_calibrated_model_has_a_small_ece_and_a_miscalibrated_one_a_large_one() -> None:
    logits, labels = _logits_and_labels(20_000, 1.0)
    assert figures(logits, labels).ece < 0.015
    # Twice as sharp as the truth: confident beyond its accuracy.
    sharp = figures(logits * 2, labels)
    assert sharp.ece > 0.05
    assert sharp.mean_confidence > sharp.accuracy


def test_figures_on_a_hand_checked_case() -> None:
    # Two images, both predicted at probability 0.8 (one bin): one right, one wrong.
    p = torch.tensor([[0.8, 0.2], [0.8, 0.2]], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    got = figures(p.log(), labels)
    assert got.accuracy == 0.5
    assert got.mean_confidence == pytest.approx(0.8)
    assert got.ece == pytest.approx(0.3)  # |0.8 - 0.5|
    assert got.nll == pytest.approx(-(math.log(0.8) + math.log(0.2)) / 2)
    # Brier: (0.2^2 + 0.2^2) for the right one, (0.8^2 + 0.8^2) for the wrong one.
    assert got.brier == pytest.approx((0.08 + 1.28) / 2)


def test_nll_is_the_cross_entropy() -> None:
    logits, labels = _logits_and_labels(500, 1.0)
    assert figures(logits, labels).nll == pytest.approx(float(F.cross_entropy(logits, labels)))


def test_folding_divides_the_logits_by_the_temperature() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.randn(5, 4, 4)
    want = model(x) / 2.5
    fold_temperature(model, 2.5)
    assert torch.allclose(model(x), want, atol=1e-6)


def test_validation_split_is_disjoint_repeatable_and_complete() -> None:
    images = torch.arange(1000, dtype=torch.uint8).view(1000, 1, 1, 1).expand(1000, 1, 2, 2)
    data = Split(images.clone(), torch.arange(1000))
    train, val = validation_split(data, 100, seed=3)
    assert (len(train), len(val)) == (900, 100)
    assert set(train.labels.tolist()).isdisjoint(val.labels.tolist())
    assert sorted(train.labels.tolist() + val.labels.tolist()) == list(range(1000))
    assert torch.equal(validation_split(data, 100, seed=3)[1].labels, val.labels)
    assert not torch.equal(validation_split(data, 100, seed=4)[1].labels, val.labels)
    with pytest.raises(ValueError, match="validation size"):
        validation_split(data, 1000)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained with a held-out validation split, so it has a temperature."""
    out = tmp_path_factory.mktemp("models")
    cfg = TrainConfig(
        name="tiny-calibrated", dataset="mnist", arch="lenet5", epochs=1, batch_size=32,
        lr=3e-3, schedule="none", device="cpu", out_dir=out, limit_train=1024, limit_test=256,
        val_size=256, ema_decay=0.9,
    )  # fmt: skip
    run(cfg, log=lambda *_: None)
    return out / "tiny-calibrated"


def test_training_with_a_validation_split_fits_and_stores_a_temperature(
    calibrated: Path,
) -> None:
    manifest = load_model(calibrated).manifest
    cal = manifest.calibration
    assert cal.method == "temperature"
    assert cal.held_out
    assert cal.validation_samples == 256
    assert cal.temperature != 1.0
    assert manifest.training["val_size"] == 256
    assert (calibrated / "reliability.png").stat().st_size > 0
    # The manifest's test figures are those of the model as served (temperature applied).
    assert manifest.metrics.test_ece is not None
    assert manifest.metrics.test_loss <= cal.test_uncalibrated["nll"] + 1e-6


def test_loaded_model_serves_logits_divided_by_the_temperature(
    calibrated: Path, mnist_test: Split
) -> None:
    served = load_model(calibrated)
    raw = load_model(calibrated, calibrated=False)
    x = served.preprocessor(mnist_test.images[:100])
    with torch.inference_mode():
        want = raw.model(x) / served.manifest.calibration.temperature
        assert torch.allclose(served.model(x), want, rtol=0, atol=1e-5)
    # The weights file is checked as stored: folding happens after the checksum.
    assert served.manifest.weights.sha256 == sha256_file(calibrated / WEIGHTS_NAME)


def test_onnx_runtime_serves_the_calibrated_logits(calibrated: Path) -> None:
    loaded = load_model(calibrated)
    forward = optimized_for_cpu(loaded.model, torch.randn(8, 1, 32, 32), loaded.name)
    assert isinstance(forward, OnnxForward)
    temperature = loaded.manifest.calibration.temperature
    raw = load_model(calibrated, calibrated=False).model
    x = torch.randn(64, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        got = forward(x)
        assert torch.allclose(got, loaded.model(x), rtol=0, atol=TOLERANCE)
        assert torch.allclose(got, raw(x) / temperature, rtol=0, atol=TOLERANCE)


def test_a_manifest_without_calibration_loads_at_temperature_one(tmp_path: Path) -> None:
    folder = tmp_path / "mnist-lenet5"
    shutil.copytree(MODELS_DIR / "mnist-lenet5", folder)
    data = json.loads((folder / MANIFEST_NAME).read_text())
    data.pop("calibration", None)
    for key in ("test_ece", "test_brier", "test_mean_confidence"):
        data["metrics"].pop(key, None)
    (folder / MANIFEST_NAME).write_text(json.dumps(data))
    loaded = load_model(folder)
    assert loaded.manifest.calibration.temperature == 1.0
    raw = load_model(folder, calibrated=False)
    x = torch.randn(4, 1, 32, 32)
    with torch.inference_mode():
        assert torch.equal(loaded.model(x), raw.model(x))


def test_cli_calibrate_rewrites_the_manifest_and_evaluate_reports_the_figures(
    calibrated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(calibrated, folder)
    (folder / "reliability.png").unlink()
    before = Manifest.model_validate_json((folder / MANIFEST_NAME).read_text())
    assert cli_main(["calibrate", str(folder), "--val-size", "128"]) == 0
    after = Manifest.model_validate_json((folder / MANIFEST_NAME).read_text())
    assert after.weights == before.weights  # the weights file is untouched
    assert after.calibration.validation_samples == 128
    # The same seed draws the same order, so the first 128 are among the 256 held out.
    assert after.calibration.held_out
    assert after.calibration.temperature != before.calibration.temperature
    assert after.metrics.test_samples == 10_000  # the full test split
    assert (folder / "reliability.png").is_file()
    assert "temperature" in capsys.readouterr().out

    assert cli_main(["evaluate", str(folder), "--limit", "500", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["temperature"] == after.calibration.temperature
    assert 0 <= report["ece"] <= 1
    assert report["nll"] == report["loss"]
    assert report["brier"] > 0
    assert report["uncalibrated"]["accuracy"] == report["accuracy"]


def test_models_route_shows_the_calibration(client) -> None:
    body = client.get("/models/fashion-cnn").json()
    assert body["calibration"]["method"] == "temperature"
    assert body["calibration"]["temperature"] > 0
    assert 0 <= body["metrics"]["test_ece"] <= 0.015


def test_a_dry_run_of_a_calibrated_recipe_holds_out_a_smaller_split(tmp_path: Path) -> None:
    assert cli_main(["shipped", "fashion-cnn", "--dry-run", "--out-dir", str(tmp_path)]) == 0
    manifest = load_model(tmp_path / "fashion-cnn").manifest
    assert manifest.calibration.validation_samples == 128
    assert manifest.training["limit_train"] == 512
