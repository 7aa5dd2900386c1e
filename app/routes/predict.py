"""``POST /predict``: images in, class probabilities out, as JSON.

:func:`predict` reads the uploads as the body streams in, hands them to the model's batch
engine with this protocol's encoder (:func:`encode`), and returns the bytes it produces. It
is declared once, as a FastAPI route, and its OpenAPI comes from that declaration.

Requests reach it through :class:`PredictRoute`, mounted in front of the declaration: it
resolves the same dependency (:func:`~app.deps.require_api_key`) and the same query model
(:class:`PredictQuery`) itself and calls :func:`predict`. FastAPI's dependency solver and
request machinery doubled the CPU of a single-image request, which broke the service's
concurrency-64 target (docs/decisions/0011-one-pipeline-ordinary-routes.md);
tests/app/test_service.py checks that both ways of serving the declaration answer alike.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated
from urllib.parse import parse_qsl

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, Field, ValidationError
from pydantic_core import to_json
from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send

from app.batching import Output
from app.deps import ApiKeyDep, RegistryDep, get_registry, require_api_key
from app.pipeline import Pipeline
from app.schemas import ErrorBody, PredictResponse
from app.uploads import read_uploads
from training.normalize import Mode

router = APIRouter(tags=["predict"])

_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "One or more images (PNG, JPEG, GIF, BMP, WebP, TIFF)",
                        }
                    },
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "Undecodable, truncated or corrupt image",
        401: "Missing or wrong API key (when one is configured)",
        404: "Unknown model",
        413: "Body, file count or image pixel count over its limit",
        415: "Not an image type we take",
        422: "No file, or bad query parameters",
        503: "The server is draining; or the model's queue is full, or the request waited "
        "past its timeout (with Retry-After)",
    }.items()
}

_PREPROCESS_DOC = (
    "How uploads are made to look like the model's dataset before the model's own resize "
    "and normalization (the recipe is the model's `input.fit`, see docs/real-world.md). "
    "`auto` (default): an image that is already dataset-shaped (28x28, background darker "
    "than the object) is used unchanged; any other is normalized: a light background is "
    "inverted, lighting and noise are removed, and the object is cropped, scaled and "
    "centred as in MNIST (digit in a 20x20 box, centre of mass at the centre of 28x28) or "
    "Fashion-MNIST (longer side 28 px, centred). `dataset`: always normalize, even 28x28 "
    "dark-background images. `none`: never normalize; the image is only resized."
)


class PredictQuery(BaseModel):
    """The query parameters of ``POST /predict``."""

    model: str | None = Field(None, description="Model name; default model if absent")
    top_k: int | None = Field(None, ge=1, description="Also list the K best classes")
    preprocess: Mode = Field("auto", description=_PREPROCESS_DOC)
    include_input: bool = Field(
        False,
        description="Also return what the model saw: each prediction's `input_image`, the "
        "model's input (after fitting and resizing) as a PNG data URL",
    )


def encode(pipeline: Pipeline, top_k: int | None, include_input: bool, output: Output) -> bytes:
    """Stage 5 for ``/predict``: one request's outputs -> its :class:`PredictResponse` JSON.

    Built as plain dicts and serialized by pydantic-core in one call: validating each
    ``Prediction`` model costs more than the forward pass of a 64-image batch. The shape is
    the documented model's; tests/app/test_predict.py validates responses against it.
    """
    classes = pipeline.classes
    probs = output.probabilities
    k = min(top_k, len(classes)) if top_k else 0
    images = pipeline.input_images(output.inputs) if include_input else None
    predictions = []
    # argmax: the first of equal maxima, as max() over the row would pick.
    for i, (row, best) in enumerate(zip(probs.tolist(), probs.argmax(1).tolist(), strict=True)):
        entry: dict[str, object] = {
            "label": classes[best], "class_index": best, "probability": row[best],
            "probabilities": dict(zip(classes, row, strict=True)),
        }  # fmt: skip
        if k:
            order = sorted(range(len(row)), key=row.__getitem__, reverse=True)[:k]
            entry["top_k"] = [{"label": classes[i], "probability": row[i]} for i in order]
        if images is not None:
            entry["input_image"] = images[i]
        predictions.append(entry)
    return to_json({"model": pipeline.name, "predictions": predictions})


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses=_ERRORS,
    openapi_extra=_BODY_DOC,
    dependencies=[ApiKeyDep],
)
async def predict(
    request: Request, query: Annotated[PredictQuery, Query()], registry: RegistryDep
) -> Response:
    """Classify one or more uploaded images: one prediction per file, in upload order."""
    serving = registry.get(query.model)
    serving.engine.refuse_if_full()
    uploads = await read_uploads(
        request.headers.get("content-type", ""), request.stream(), registry.settings.max_files
    )
    pipeline = serving.pipeline
    body = await serving.engine.submit(
        partial(pipeline.prepare, uploads, query.preprocess),
        partial(encode, pipeline, query.top_k, query.include_input),
        len(uploads),
    )
    return Response(body, media_type="application/json")


def parse_query(request: Request) -> PredictQuery:
    """The query string -> :class:`PredictQuery`; a bad value is FastAPI's usual 422."""
    query = request.scope.get("query_string", b"").decode("latin-1")
    try:
        return PredictQuery.model_validate(dict(parse_qsl(query, keep_blank_values=True)))
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        raise RequestValidationError([{**e, "loc": ("query", *e["loc"])} for e in errors]) from None


class PredictRoute(Route):
    """``POST /predict`` served without FastAPI's dependency solver (module docstring)."""

    def __init__(self) -> None:
        super().__init__("/predict", self.serve, methods=["POST"], include_in_schema=False)
        self.app = self.serve  # an ASGI app: no per-request wrapper around it

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        # Named in scope["route"] as FastAPI's routes are: the request metrics use it.
        match, child_scope = super().matches(scope)
        if match is not Match.NONE:
            child_scope["route"] = self
        return match, child_scope

    @staticmethod
    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        registry = await get_registry(request)
        await require_api_key(request, registry)
        response = await predict(request, parse_query(request), registry)
        await response(scope, receive, send)
