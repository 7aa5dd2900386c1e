"""The Open Inference Protocol (V2) over HTTP: server and model metadata, model readiness,
inference (the health routes are in app/routes/health.py).

Inference goes through the same batch engine as ``/predict``: V2 requests and ``/predict``
requests share batches; only the decoding of the request (app/oip/rest.py) and the encoder
of the response differ. Errors on these routes are ``{"error": ...}`` (app/errors.py).
The model routes take the API key when one is set; server metadata stays open like health.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.batching import Output
from app.config import Settings
from app.deps import ApiKeyDep, RegistryDep
from app.errors import NotReady
from app.oip import rest
from app.oip.tensors import (
    EXTENSIONS,
    SERVER_NAME,
    OutputTensor,
    check_version,
    model_metadata,
    plan,
    server_version,
)
from app.registry import Registry, ServingModel
from app.uploads import read_body

router = APIRouter(tags=["v2"])

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": rest.V2Error, "description": text}
    for code, text in {
        400: "Malformed JSON or binary framing; an input, output, datatype, shape or element "
        "count the model does not take; an undecodable image",
        401: "Missing or wrong API key (when one is configured)",
        404: "Unknown model or version",
        413: "Body (also once decompressed), image count or image pixel count over its limit",
        415: "An image element that is not an image type we take; an unknown Content-Encoding",
        503: "Not ready: the server is draining",
    }.items()
}
_MODEL_ERRORS: dict[int | str, dict[str, object]] = {
    code: _ERRORS[code] for code in (401, 404, 503)
}

_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": rest.InferRequestBody.model_json_schema()},
            "application/octet-stream": {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": f"The binary tensor extension: {rest.HEADER_LENGTH} bytes "
                    "of the JSON request, then each input's binary_data_size bytes",
                }
            },
        },
    }
}


def _model(registry: Registry, model: str, version: str | None) -> ServingModel:
    serving = registry.get(model)
    check_version(model, version)
    return serving


@router.get("/v2", response_model=rest.ServerMetadata)
async def server_metadata() -> rest.ServerMetadata:
    """The server's name, version and protocol extensions."""
    return rest.ServerMetadata(
        name=SERVER_NAME, version=server_version(), extensions=list(EXTENSIONS)
    )


def _metadata(registry: Registry, model: str, version: str | None) -> rest.ModelMetadata:
    serving = _model(registry, model, version)
    return rest.ModelMetadata.model_validate(model_metadata(serving.pipeline))


def _ready(registry: Registry, model: str, version: str | None) -> rest.ModelReady:
    reason = registry.not_ready_reason()
    if reason is not None:  # draining: still serving, but no longer ready
        raise NotReady(f"not ready: {reason}")
    return rest.ModelReady(name=_model(registry, model, version).name, ready=True)


@router.get("/v2/models/{model}", responses=_MODEL_ERRORS, dependencies=[ApiKeyDep])
async def get_model_metadata(model: str, registry: RegistryDep) -> rest.ModelMetadata:
    """A model's versions, platform and tensors."""
    return _metadata(registry, model, None)


@router.get(
    "/v2/models/{model}/versions/{version}", responses=_MODEL_ERRORS, dependencies=[ApiKeyDep]
)
async def get_model_version_metadata(
    model: str, version: str, registry: RegistryDep
) -> rest.ModelMetadata:
    """A model version's metadata (each model has one version, "1")."""
    return _metadata(registry, model, version)


@router.get("/v2/models/{model}/ready", responses=_MODEL_ERRORS, dependencies=[ApiKeyDep])
async def model_ready(model: str, registry: RegistryDep) -> rest.ModelReady:
    """200 when the model takes requests; 503 while the server drains."""
    return _ready(registry, model, None)


@router.get(
    "/v2/models/{model}/versions/{version}/ready", responses=_MODEL_ERRORS, dependencies=[ApiKeyDep]
)
async def model_version_ready(model: str, version: str, registry: RegistryDep) -> rest.ModelReady:
    """200 when the model version takes requests; 503 while the server drains."""
    return _ready(registry, model, version)


# Both infer paths, with and without a version, are declared alike.
_INFER_ROUTE: dict[str, Any] = dict(
    response_model=rest.InferResponseBody,
    responses=_ERRORS,
    openapi_extra=_BODY_DOC,
    dependencies=[ApiKeyDep],
)


@router.post("/v2/models/{model}/infer", **_INFER_ROUTE)
async def infer(request: Request, model: str, registry: RegistryDep) -> Response:
    """Run the model on one ``image`` (encoded files) or ``input`` (model inputs) tensor."""
    return await _infer(request, _model(registry, model, None), registry.settings)


@router.post("/v2/models/{model}/versions/{version}/infer", **_INFER_ROUTE)
async def infer_version(
    request: Request, model: str, version: str, registry: RegistryDep
) -> Response:
    """Inference on a model version (each model has one version, "1")."""
    return await _infer(request, _model(registry, model, version), registry.settings)


async def _infer(request: Request, serving: ServingModel, settings: Settings) -> Response:
    serving.engine.refuse_if_full()
    body = await read_body(request.stream())
    encoding = request.headers.get("content-encoding", "")
    if encoding.strip().lower() not in ("", "identity"):
        # Inflating up to the body limit takes milliseconds: off the event loop.
        body = await asyncio.to_thread(rest.decompress, body, encoding, settings.max_body_bytes)
    parsed = rest.parse(body, request.headers.get(rest.HEADER_LENGTH))
    pipeline = serving.pipeline
    work = plan(pipeline, parsed.request, settings.max_files)

    def encode(output: Output) -> tuple[bytes, int | None]:
        tensors: list[OutputTensor] = work.outputs(output.probabilities)
        return rest.encode(pipeline.name, parsed.request.id, tensors, parsed.binary)

    content, header_length = await serving.engine.submit(work.prepare, encode, work.size)
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(
        content,
        media_type="application/octet-stream",
        headers={rest.HEADER_LENGTH: str(header_length)},
    )
