"""``model.json``: everything needed to rebuild, verify and feed a model's weights."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from training.preprocess import InputSpec

MANIFEST_NAME = "model.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1


class ArchitectureRef(BaseModel):
    name: str
    config: dict[str, Any] = Field(default_factory=dict)


class WeightsRef(BaseModel):
    file: str = Field(pattern=r"^[A-Za-z0-9._-]+$")  # a plain name inside the model folder
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    format: str = "safetensors"


class Metrics(BaseModel):
    """Test-split figures of the model as served, i.e. with its temperature applied."""

    test_accuracy: float = Field(ge=0, le=1)
    test_loss: float  # mean cross-entropy: the negative log-likelihood (NLL)
    epochs: int = Field(ge=0)
    test_samples: int = Field(ge=0)
    # training/calibration.py: top-1 ECE over 15 bins, Brier score, mean top-1 probability.
    # Absent from manifests written before calibration existed.
    test_ece: float | None = Field(default=None, ge=0, le=1)
    test_brier: float | None = Field(default=None, ge=0)
    test_mean_confidence: float | None = Field(default=None, ge=0, le=1)


class Calibration(BaseModel):
    """How the logits are scaled before the softmax; the default leaves them as trained."""

    method: Literal["none", "temperature"] = "none"
    # The loader divides the logits by this (training/calibration.py fold_temperature).
    temperature: float = Field(default=1.0, gt=0)
    # The training images it was fitted on: validation_split(train, size, seed).
    validation_samples: int = Field(default=0, ge=0)
    validation_seed: int = 0
    # False when the model was trained on those images too (a model trained before it
    # held any out): the fit then sees the model at its most confident.
    held_out: bool = True
    # The same test figures as `metrics` at temperature 1, and the fit's validation figures.
    test_uncalibrated: dict[str, float] = Field(default_factory=dict)
    validation: dict[str, float] = Field(default_factory=dict)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    architecture: ArchitectureRef
    input: InputSpec
    classes: list[str] = Field(min_length=2)
    dataset: str
    metrics: Metrics
    calibration: Calibration = Field(default_factory=Calibration)
    weights: WeightsRef
    versions: dict[str, str] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
