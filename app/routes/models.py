"""The loaded models and their manifests."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import ApiKeyDep, RegistryDep
from app.registry import ServingModel
from app.schemas import ErrorBody, ModelInfo, ModelList

router = APIRouter(tags=["models"], dependencies=[ApiKeyDep])


def _info(model: ServingModel, default: str) -> ModelInfo:
    m = model.loaded.manifest
    return ModelInfo(
        name=m.name,
        default=m.name == default,
        architecture=m.architecture.model_dump(),
        input=m.input.model_dump(),
        classes=m.classes,
        dataset=m.dataset,
        metrics=m.metrics.model_dump(),
        calibration=m.calibration.model_dump(),
        weights_sha256=m.weights.sha256,
        device=str(model.loaded.device),
    )


@router.get("/models", response_model=ModelList)
async def list_models(registry: RegistryDep) -> ModelList:
    """Every loaded model with its manifest."""
    default = registry.settings.default_model
    models = [_info(registry.models[n], default) for n in sorted(registry.models)]
    return ModelList(default_model=default, models=models)


@router.get("/models/{name}", response_model=ModelInfo, responses={404: {"model": ErrorBody}})
async def get_model(name: str, registry: RegistryDep) -> ModelInfo:
    """One loaded model; 404 if it is not loaded."""
    return _info(registry.get(name), registry.settings.default_model)
