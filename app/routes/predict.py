"""``POST /predict``: images in, class probabilities out."""

from __future__ import annotations

from typing import Annotated

import torch
from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from app.config import Settings
from app.deps import RegistryDep, require_api_key
from app.errors import InvalidImage, NoFile, PayloadTooLarge, UnsupportedMediaType
from app.imaging import decode
from app.registry import ServingModel
from app.schemas import ErrorBody, Prediction, PredictResponse, TopK
from training.preprocess import Preprocessor

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


def prepare(uploads: list[Upload], preprocessor: Preprocessor, max_pixels: int) -> torch.Tensor:
    """Decode and preprocess every upload (in a worker thread) -> one input batch."""
    return torch.stack(
        [preprocessor.from_image(decode(data, name, max_pixels)) for name, data in uploads]
    )


def build_response(model: ServingModel, probs: torch.Tensor, top_k: int | None) -> PredictResponse:
    classes = model.loaded.manifest.classes
    k = min(top_k, len(classes)) if top_k else 0
    predictions = []
    for row in probs.tolist():
        best = max(range(len(row)), key=row.__getitem__)
        entry = Prediction(
            label=classes[best], class_index=best, probability=row[best],
            probabilities=dict(zip(classes, row, strict=True)),
        )  # fmt: skip
        if k:
            order = sorted(range(len(row)), key=row.__getitem__, reverse=True)[:k]
            entry.top_k = [TopK(label=classes[i], probability=row[i]) for i in order]
        predictions.append(entry)
    return PredictResponse(model=model.name, predictions=predictions)


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
) -> PredictResponse:
    """Classify one or more uploaded images: one prediction per file, in upload order."""
    serving = registry.get(model)
    uploads = await read_uploads(request, registry.settings)
    preprocessor = serving.loaded.preprocessor
    limit = registry.settings.max_image_pixels
    inputs = await run_in_threadpool(prepare, uploads, preprocessor, limit)
    probs = await serving.engine.predict(inputs)
    return build_response(serving, probs, top_k)
