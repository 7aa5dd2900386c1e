"""Each way a model folder can be broken gives a clear error naming the folder."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers import MODELS_DIR
from training.loader import ModelLoadError, load_model
from training.manifest import MANIFEST_NAME, WEIGHTS_NAME


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    dst = tmp_path / "mnist-lenet5"
    shutil.copytree(MODELS_DIR / "mnist-lenet5", dst)
    return dst


def _edit_manifest(folder: Path, change) -> None:
    path = folder / MANIFEST_NAME
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _fails(folder: Path, match: str) -> ModelLoadError:
    with pytest.raises(ModelLoadError, match=match) as info:
        load_model(folder)
    assert str(folder) in str(info.value)
    return info.value


def test_intact_folder_loads_in_eval_mode(folder: Path) -> None:
    loaded = load_model(folder, "cpu")
    assert not loaded.model.training
    assert loaded.device == torch.device("cpu")
    assert loaded.name == "mnist-lenet5"


def test_missing_manifest(folder: Path) -> None:
    (folder / MANIFEST_NAME).unlink()
    _fails(folder, "missing model.json")


def test_missing_weights(folder: Path) -> None:
    (folder / WEIGHTS_NAME).unlink()
    _fails(folder, "missing weights file")


def test_truncated_weights_fail_the_checksum(folder: Path) -> None:
    data = (folder / WEIGHTS_NAME).read_bytes()
    (folder / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    _fails(folder, "checksum mismatch")


def test_tampered_weights_fail_the_checksum(folder: Path) -> None:
    data = bytearray((folder / WEIGHTS_NAME).read_bytes())
    data[-1] ^= 0xFF
    (folder / WEIGHTS_NAME).write_bytes(bytes(data))
    _fails(folder, "checksum mismatch")


def test_unreadable_weights(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As root every file is readable, so the permission error is simulated.
    real_open = Path.open

    def guarded(self: Path, *args, **kwargs):
        if self.name == WEIGHTS_NAME:
            raise PermissionError(13, "Permission denied")
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", guarded)
    _fails(folder, "cannot read model.safetensors: Permission denied")


def test_unknown_architecture(folder: Path) -> None:
    _edit_manifest(folder, lambda d: d["architecture"].update(name="resnet9000"))
    _fails(folder, "unknown architecture 'resnet9000'")


def test_weights_that_do_not_fit_the_architecture(folder: Path) -> None:
    _edit_manifest(folder, lambda d: d["architecture"].update(name="lenet3x3", config={}))
    _fails(folder, "weights do not fit the architecture")


def test_bad_architecture_config(folder: Path) -> None:
    _edit_manifest(folder, lambda d: d["architecture"]["config"].update(wings=2))
    _fails(folder, "bad architecture config")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d: d.pop("classes"), "malformed model.json: classes"),
        (lambda d: d["input"].update(height=-3), "malformed model.json: input.height"),
        (lambda d: d["weights"].update(sha256="xyz"), "malformed model.json: weights.sha256"),
        (lambda d: d["weights"].update(file="../../etc/passwd"), "weights.file"),
    ],
)
def test_malformed_manifest(folder: Path, change, match: str) -> None:
    _edit_manifest(folder, change)
    _fails(folder, match)


def test_manifest_that_is_not_json(folder: Path) -> None:
    (folder / MANIFEST_NAME).write_text("{not json")
    _fails(folder, "malformed model.json")


def test_pickle_checkpoint_is_never_unpickled(folder: Path, tmp_path: Path) -> None:
    """A torch.save pickle renamed into place is rejected before anything is unpickled."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (marker.write_text, ("x",))

    torch.save({"x": Evil()}, folder / WEIGHTS_NAME)
    from training.loader import sha256_file

    # Even with a matching checksum, safetensors refuses the pickle.
    _edit_manifest(folder, lambda d: d["weights"].update(sha256=sha256_file(folder / WEIGHTS_NAME)))
    _fails(folder, "unreadable weights file")
    assert not marker.exists()
