"""Response bodies, documented in OpenAPI with examples."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

_DIGITS = [str(d) for d in range(10)]
_EXAMPLE_PROBS: dict[str, Any] = dict.fromkeys(_DIGITS, 0.0002) | {"7": 0.9982}


class TopK(BaseModel):
    label: str
    probability: float


class Prediction(BaseModel):
    label: str = Field(description="The most probable class")
    class_index: int = Field(description="Its index in the model's class list")
    probability: float = Field(description="Its softmax probability")
    probabilities: dict[str, float] = Field(description="Every class of the model; sums to 1")
    top_k: list[TopK] | None = Field(None, description="With ?top_k=K: the K best, descending")
    input_image: str | None = Field(
        None, description="With ?include_input=true: the model's input as a PNG data URL"
    )


class PredictResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{
                "model": "mnist-lenet5",
                "predictions": [{
                    "label": "7", "class_index": 7, "probability": 0.9982,
                    "probabilities": _EXAMPLE_PROBS,
                    "top_k": [{"label": "7", "probability": 0.9982},
                              {"label": "1", "probability": 0.0002}],
                }],
            }]
        }
    )  # fmt: skip

    model: str
    predictions: list[Prediction] = Field(description="One entry per file, in upload order")


class ModelInfo(BaseModel):
    name: str
    default: bool
    architecture: dict[str, Any]
    input: dict[str, Any]
    classes: list[str]
    dataset: str
    metrics: dict[str, Any]
    calibration: dict[str, Any] = Field(description="The temperature the logits are divided by")
    weights_sha256: str
    device: str


class ModelList(BaseModel):
    default_model: str
    models: list[ModelInfo]


class Health(BaseModel):
    status: str
    models: list[str] = Field(default_factory=list)


class ErrorBody(BaseModel):
    detail: str
    request_id: str | None = Field(
        None, description="The request's ID, as in its X-Request-ID response header"
    )
