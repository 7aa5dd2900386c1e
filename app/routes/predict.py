"""``POST /predict``: images in, class probabilities out.

The requests are served by :class:`PredictEndpoint`, a plain ASGI route: on one core,
FastAPI's per-request machinery (the ``Request``, dependency solving, two exit stacks)
plus Starlette's form parser were more than half of a single-image request
(bench/RESULTS.md). It still runs inside the app's middleware (metrics, body limit) and
exception handlers, so its errors are the same JSON as everywhere else. Its OpenAPI
operation comes from :func:`predict`, the declaration FastAPI documents, which is mounted
after it and so never receives a request; tests/test_service.py and the schemathesis run
in tests/test_fuzz.py check the two agree.
"""

from __future__ import annotations

from functools import partial
from itertools import chain
from typing import Annotated, NoReturn
from urllib.parse import parse_qsl

import numpy as np
import torch
from fastapi import APIRouter, Query
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError
from pydantic_core import to_json
from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send

from app.deps import check_api_key
from app.imaging import decode
from app.registry import Registry
from app.schemas import ErrorBody, PredictResponse
from app.uploads import Upload, read_uploads
from training.normalize import Mode
from training.preprocess import TRANSFORM_CHUNK_PIXELS, Preprocessor

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
        503: "Models not loaded yet",
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


def parse_query(query_string: bytes) -> PredictQuery:
    """The query string -> :class:`PredictQuery`; a bad value is FastAPI's usual 422."""
    params = dict(parse_qsl(query_string.decode("latin-1"), keep_blank_values=True))
    try:
        return PredictQuery.model_validate(params)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        raise RequestValidationError([{**e, "loc": ("query", *e["loc"])} for e in errors]) from None


def prepare(
    uploads: list[Upload], preprocessor: Preprocessor, max_pixels: int, mode: Mode = "auto"
) -> torch.Tensor | list[np.ndarray]:
    """Decode and preprocess every upload (runs on the batch worker).

    Uploads are decoded one by one, in order (the first bad one is the error). Each is
    reduced to its uint8 array (:meth:`Preprocessor.to_arrays`); small ones are returned
    as arrays, and the batch worker runs the model's transform once over the arrays of
    every request in the batch (:meth:`Preprocessor.from_arrays`): a single-image request
    no longer pays a transform call of its own. Past ``TRANSFORM_CHUNK_PIXELS`` pixels in
    one request, the rest is transformed here as it is decoded, so large uploads are never
    all held at once.
    """
    stream = preprocessor.to_arrays((decode(d, n, max_pixels) for n, d in uploads), mode)
    arrays: list[np.ndarray] = []
    held = 0
    for array in stream:
        arrays.append(array)
        held += array.size
        if held >= TRANSFORM_CHUNK_PIXELS:
            return preprocessor.from_arrays(chain(arrays, stream))
    return arrays


def render(model_name: str, classes: list[str], probs: torch.Tensor, top_k: int | None) -> bytes:
    """The :class:`PredictResponse` JSON for ``probs`` (runs on the batch worker).

    Built as plain dicts and serialized by pydantic-core in one call: validating 64
    ``Prediction`` models and then the response again cost more than the forward pass
    (bench/RESULTS.md). The shape is the documented ``PredictResponse``, ``top_k`` only
    when asked for; tests/test_service.py checks it.
    """
    k = min(top_k, len(classes)) if top_k else 0
    predictions = []
    # argmax: the first of equal maxima, as max() over the row would pick.
    for row, best in zip(probs.tolist(), probs.argmax(1).tolist(), strict=True):
        entry: dict[str, object] = {
            "label": classes[best], "class_index": best, "probability": row[best],
            "probabilities": dict(zip(classes, row, strict=True)),
        }  # fmt: skip
        if k:
            order = sorted(range(len(row)), key=row.__getitem__, reverse=True)[:k]
            entry["top_k"] = [{"label": classes[i], "probability": row[i]} for i in order]
        predictions.append(entry)
    return to_json({"model": model_name, "predictions": predictions})


class PredictEndpoint:
    """``POST /predict`` as a plain ASGI app (see the module docstring)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        registry: Registry = scope["app"].state.registry
        settings = registry.settings
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:  # the first of a repeated header, as Starlette
            headers.setdefault(name, value)
        key, auth = headers.get(b"x-api-key"), headers.get(b"authorization")
        check_api_key(
            settings,
            None if key is None else key.decode("latin-1"),
            None if auth is None else auth.decode("latin-1"),
        )
        query = parse_query(scope.get("query_string", b""))
        serving = registry.get(query.model)
        uploads = await read_uploads(headers.get(b"content-type", b""), receive, settings.max_files)
        loaded = serving.loaded
        # One hop: the batch worker decodes, preprocesses, batches, runs and renders.
        body = await serving.engine.submit(
            partial(
                prepare, uploads, loaded.preprocessor, settings.max_image_pixels, query.preprocess
            ),
            partial(render, serving.name, loaded.manifest.classes, top_k=query.top_k),
            len(uploads),
        )
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _PredictRoute(Route):
    """A Starlette route that, like FastAPI's, names itself in ``scope["route"]`` (the
    request metrics are labelled by route template)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is not Match.NONE:
            child_scope["route"] = self
        return match, child_scope


def predict_route() -> Route:
    """The route that serves ``POST /predict``; mount it before :data:`router`."""
    return _PredictRoute("/predict", PredictEndpoint(), methods=["POST"], include_in_schema=False)


@router.post(
    "/predict",
    response_model=PredictResponse,
    response_model_exclude_none=True,
    responses=_ERRORS,
    openapi_extra=_BODY_DOC,
)
async def predict(query: Annotated[PredictQuery, Query()]) -> NoReturn:
    """Classify one or more uploaded images: one prediction per file, in upload order."""
    # The OpenAPI declaration of PredictEndpoint, which create_app mounts in front of it.
    raise AssertionError("POST /predict is served by PredictEndpoint")
