"""``POST /predict``: images in, class probabilities out."""

from __future__ import annotations

from functools import partial
from itertools import chain
from typing import Annotated

import numpy as np
import torch
from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic_core import to_json
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from app.config import Settings
from app.deps import RegistryDep, require_api_key
from app.errors import InvalidImage, NoFile, PayloadTooLarge, UnsupportedMediaType
from app.imaging import decode
from app.schemas import ErrorBody, PredictResponse
from training.normalize import Mode
from training.preprocess import TRANSFORM_CHUNK_PIXELS, Preprocessor

router = APIRouter(tags=["predict"], dependencies=[Depends(require_api_key)])

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

Upload = tuple[str, bytes]  # (name for messages, bytes)

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


def _label(filename: str | None, index: int) -> str:
    name = (filename or "").strip()[:100]
    return f"file #{index} ({name!r})" if name else f"file #{index}"


async def read_uploads(request: Request, settings: Settings) -> list[Upload]:
    """The request's images: multipart parts named ``file``, or one raw ``image/*`` body."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "multipart/form-data":
        parser = MultiPartParser(
            request.headers, request.stream(), max_files=settings.max_files,
            max_fields=100, max_part_size=settings.max_body_bytes,
        )  # fmt: skip
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            if exc.message.startswith("Too many files"):
                raise PayloadTooLarge(
                    f"too many files: at most {settings.max_files} per request"
                ) from None
            raise InvalidImage(f"malformed multipart body: {exc.message}") from None
        uploads: list[Upload] = []
        try:
            for key, value in form.multi_items():
                if key != "file":
                    continue
                index = len(uploads) + 1
                if not isinstance(value, UploadFile):
                    raise NoFile(f"{_label(None, index)}: the 'file' part must be a file upload")
                uploads.append((_label(value.filename, index), await value.read()))
        finally:
            await form.close()
        if not uploads:
            raise NoFile("no part named 'file' in the multipart body")
        return uploads
    if media.startswith("image/"):
        return [("body", await request.body())]
    if not media:
        if not await request.body():
            raise NoFile(
                "no image: send multipart/form-data with 'file' parts, or a raw image/* body"
            )
        raise UnsupportedMediaType("missing Content-Type: use multipart/form-data or image/*")
    raise UnsupportedMediaType(
        f"Content-Type {media} is not accepted: use multipart/form-data or image/*"
    )


def prepare(
    uploads: list[Upload], preprocessor: Preprocessor, max_pixels: int, mode: Mode = "auto"
) -> torch.Tensor | list[np.ndarray]:
    """Decode and preprocess every upload (runs on the batch worker).

    Uploads are decoded one by one, in order (the first bad one is the error). Each is
    reduced to its uint8 array (:meth:`Preprocessor.to_array`); small ones are returned
    as arrays, and the batch worker runs the model's transform once over the arrays of
    every request in the batch (:meth:`Preprocessor.from_arrays`): a single-image request
    no longer pays a transform call of its own. Past ``TRANSFORM_CHUNK_PIXELS`` pixels in
    one request, the rest is transformed here as it is decoded, so large uploads are never
    all held at once.
    """
    arrays: list[np.ndarray] = []
    held = 0
    rest = iter(uploads)
    for name, data in rest:
        arrays.append(preprocessor.to_array(decode(data, name, max_pixels), mode))
        held += arrays[-1].size
        if held >= TRANSFORM_CHUNK_PIXELS:
            more = (preprocessor.to_array(decode(d, n, max_pixels), mode) for n, d in rest)
            return preprocessor.from_arrays(chain(arrays, more))
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
    for row in probs.tolist():
        best = max(range(len(row)), key=row.__getitem__)
        entry: dict[str, object] = {
            "label": classes[best], "class_index": best, "probability": row[best],
            "probabilities": dict(zip(classes, row, strict=True)),
        }  # fmt: skip
        if k:
            order = sorted(range(len(row)), key=row.__getitem__, reverse=True)[:k]
            entry["top_k"] = [{"label": classes[i], "probability": row[i]} for i in order]
        predictions.append(entry)
    return to_json({"model": model_name, "predictions": predictions})


@router.post(
    "/predict",
    response_model=PredictResponse,
    response_model_exclude_none=True,
    responses=_ERRORS,
    openapi_extra=_BODY_DOC,
)
async def predict(
    request: Request,
    registry: RegistryDep,
    model: Annotated[str | None, Query(description="Model name; default model if absent")] = None,
    top_k: Annotated[int | None, Query(ge=1, description="Also list the K best classes")] = None,
    preprocess: Annotated[Mode, Query(description=_PREPROCESS_DOC)] = "auto",
) -> Response:
    """Classify one or more uploaded images: one prediction per file, in upload order."""
    serving = registry.get(model)
    uploads = await read_uploads(request, registry.settings)
    preprocessor = serving.loaded.preprocessor
    limit = registry.settings.max_image_pixels
    classes = serving.loaded.manifest.classes
    # One hop: the batch worker decodes, preprocesses, batches, runs and renders.
    body = await serving.engine.submit(
        partial(prepare, uploads, preprocessor, limit, preprocess),
        partial(render, serving.name, classes, top_k=top_k),
        len(uploads),
    )
    return Response(body, media_type="application/json")
