"""The one place weights are loaded: verify, rebuild from the manifest, load pickle-free."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from training.architectures import UnknownArchitectureError, build_model
from training.calibration import fold_temperature
from training.manifest import MANIFEST_NAME, Manifest
from training.preprocess import Preprocessor


class ModelLoadError(RuntimeError):
    """A model folder that cannot be served; the message names the folder and the reason."""

    def __init__(self, folder: Path, reason: str) -> None:
        super().__init__(f"model folder {folder}: {reason}")
        self.folder = folder
        self.reason = reason


@dataclass
class LoadedModel:
    """A model ready for inference, with the manifest and preprocessing that belong to it."""

    model: nn.Module
    manifest: Manifest
    preprocessor: Preprocessor
    device: torch.device

    @property
    def name(self) -> str:
        return self.manifest.name


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(folder: Path) -> Manifest:
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise ModelLoadError(folder, f"missing {MANIFEST_NAME}")
    try:
        return Manifest.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(folder, f"malformed {MANIFEST_NAME}: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise ModelLoadError(
            folder, f"malformed {MANIFEST_NAME}: {where}: {first['msg']}"
        ) from None


def load_model(
    folder: str | Path, device: str | torch.device = "cpu", *, calibrated: bool = True
) -> LoadedModel:
    """Read ``folder``: check the weights' sha256, rebuild the architecture, load strictly.

    Returns the model in eval mode on ``device``; with ``calibrated`` (the default) its
    logits are already divided by the manifest's temperature. Raises
    :class:`ModelLoadError` naming the folder for a missing file, a checksum mismatch, an
    unknown architecture, weights that do not fit the architecture, or a malformed manifest.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    weights = folder / manifest.weights.file
    if not weights.is_file():
        raise ModelLoadError(folder, f"missing weights file {manifest.weights.file}")
    try:
        actual = sha256_file(weights)
    except OSError as exc:  # e.g. a file the service's user may not read
        raise ModelLoadError(
            folder, f"cannot read {manifest.weights.file}: {exc.strerror}"
        ) from None
    if actual != manifest.weights.sha256:
        raise ModelLoadError(
            folder,
            f"checksum mismatch for {manifest.weights.file}: manifest says "
            f"{manifest.weights.sha256[:12]}..., file is {actual[:12]}...",
        )
    if manifest.weights.format != "safetensors":
        raise ModelLoadError(folder, f"unsupported weights format {manifest.weights.format!r}")
    try:
        model = build_model(
            manifest.architecture.name, manifest.architecture.config, len(manifest.classes)
        )
    except UnknownArchitectureError as exc:
        raise ModelLoadError(folder, str(exc.args[0])) from None
    except TypeError as exc:
        raise ModelLoadError(folder, f"bad architecture config: {exc}") from None
    try:
        # safetensors holds raw tensors only: nothing in the file can run code.
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(folder, f"unreadable weights file: {exc}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise ModelLoadError(folder, f"weights do not fit the architecture: {detail}") from None
    if calibrated:
        # Folded into the last layer after the checksum check: the file stays as stored.
        try:
            fold_temperature(model, manifest.calibration.temperature)
        except ValueError as exc:
            raise ModelLoadError(folder, f"cannot apply the temperature: {exc}") from None
    dev = torch.device(device)
    model.to(dev).eval()
    return LoadedModel(model, manifest, Preprocessor(manifest.input), dev)


def discover(models_dir: Path) -> list[Path]:
    """Every sub-folder of ``models_dir`` that holds a manifest, sorted by name."""
    return sorted(p.parent for p in models_dir.glob(f"*/{MANIFEST_NAME}"))
