"""``model.json``: everything needed to rebuild, verify and feed a model's weights."""

from __future__ import annotations

from typing import Any

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
    test_accuracy: float = Field(ge=0, le=1)
    test_loss: float
    epochs: int = Field(ge=0)
    test_samples: int = Field(ge=0)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    architecture: ArchitectureRef
    input: InputSpec
    classes: list[str] = Field(min_length=2)
    dataset: str
    metrics: Metrics
    weights: WeightsRef
    versions: dict[str, str] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
