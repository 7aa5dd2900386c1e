"""A tiny real training run: export, load back, identical predictions; determinism."""

from pathlib import Path

import pytest
import torch

from training.cli import main as cli_main
from training.engine import evaluate
from training.loader import load_model, sha256_file
from training.manifest import MANIFEST_NAME, WEIGHTS_NAME
from training.train import TrainConfig, run


def _tiny(out: Path, **kw: object) -> TrainConfig:
    base: dict[str, object] = dict(
        name="tiny-lenet5", dataset="mnist", arch="lenet5", epochs=1, batch_size=32,
        lr=3e-3, schedule="none", device="cpu", out_dir=out, limit_train=768, limit_test=256,
        augment="digits",
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    out = tmp_path_factory.mktemp("models")
    _, model = run(_tiny(out), log=lambda *_: None)
    return out / "tiny-lenet5", model


def test_export_writes_a_complete_model_folder(tiny) -> None:
    folder, _ = tiny
    names = {p.name for p in folder.iterdir()}
    assert {
        MANIFEST_NAME,
        WEIGHTS_NAME,
        "history.csv",
        "curves.png",
        "confusion_matrix.png",
    } <= names
    manifest = load_model(folder).manifest
    assert manifest.architecture.name == "lenet5"
    assert manifest.input.height == manifest.input.width == 32
    assert manifest.classes == [str(d) for d in range(10)]
    assert manifest.weights.sha256 == sha256_file(folder / WEIGHTS_NAME)
    assert manifest.metrics.epochs == 1
    assert manifest.metrics.test_samples == 256
    assert manifest.versions["torch"] == torch.__version__
    assert manifest.training["lr"] == 3e-3
    # The manifest travels with the model: no paths of the machine that trained it.
    assert not {"out_dir", "data_dir"} & set(manifest.training)
    # The mean/std were measured on the training images, not typed in.
    assert 0.05 < manifest.input.mean[0] < 0.25
    # A few hundred images and one epoch already learn something.
    assert manifest.metrics.test_accuracy > 0.3


def test_loaded_model_predicts_as_the_trained_one(tiny, mnist_test) -> None:
    folder, trained = tiny
    loaded = load_model(folder)
    # The weights come back bit for bit ...
    expected = trained.state_dict()
    got = loaded.model.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    x = loaded.preprocessor(mnist_test.images[:200])
    trained.eval()
    with torch.no_grad():
        want, out = trained(x), loaded.model(x)
    # ... and so do the outputs.
    assert torch.allclose(out, want, rtol=0, atol=1e-5)
    assert torch.equal(out.argmax(1), want.argmax(1))
    assert not loaded.model.training


def test_manifest_metrics_match_a_fresh_evaluation(tiny, mnist_test) -> None:
    folder, _ = tiny
    loaded = load_model(folder)
    result = evaluate(loaded.model, mnist_test.subset(256), loaded.preprocessor)
    assert result.accuracy == pytest.approx(loaded.manifest.metrics.test_accuracy, abs=1e-6)
    assert int(result.confusion.sum()) == 256


def test_training_is_deterministic_on_the_cpu(tmp_path: Path, tiny) -> None:
    folder, _ = tiny
    run(_tiny(tmp_path), log=lambda *_: None)
    assert sha256_file(tmp_path / "tiny-lenet5" / WEIGHTS_NAME) == sha256_file(
        folder / WEIGHTS_NAME
    )


def test_a_different_seed_gives_different_weights(tmp_path: Path, tiny) -> None:
    folder, _ = tiny
    run(_tiny(tmp_path, seed=1), log=lambda *_: None)
    assert sha256_file(tmp_path / "tiny-lenet5" / WEIGHTS_NAME) != sha256_file(
        folder / WEIGHTS_NAME
    )


def test_cli_dry_run_and_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--dry-run", "--device", "cpu", "--out-dir", str(tmp_path), "--optimizer", "sgd"]
    assert cli_main(["train", "--dataset", "fashion-mnist", "--arch", "mlp", *args]) == 0
    folder = tmp_path / "fashion-mnist-mlp"
    manifest = load_model(folder).manifest
    assert manifest.classes[0] == "T-shirt/top"
    assert manifest.training["optimizer"] == "sgd"
    capsys.readouterr()
    assert cli_main(["evaluate", str(folder), "--limit", "100", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out
    assert "Ankle boot" in out


def test_cli_reports_a_missing_dataset_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli_main(["train", "--dataset", "mnist", "--arch", "lenet5", "--dry-run",
                     "--data-dir", str(tmp_path), "--out-dir", str(tmp_path)])  # fmt: skip
    assert code == 2
    assert "--data-dir" in capsys.readouterr().err
