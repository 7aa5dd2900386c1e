"""The plain baseline the benchmark compares the service against.

What a tutorial would write: a sync ``def`` endpoint (FastAPI runs it in its thread pool),
one image per forward pass, no batching; a request with several files is classified file by
file. It loads the model with the service's own loader (:func:`training.loader.load_model`)
and decodes and preprocesses with the service's own code (:func:`app.imaging.decode`,
:meth:`Preprocessor.from_image`), so the only difference the benchmark measures is the
serving path.

Run: ``BENCH_MODEL_DIR=models/mnist-lenet5 uvicorn bench.baseline:app``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, HTTPException, UploadFile

from app.errors import ServeError
from app.imaging import decode
from training.loader import load_model

_REPO = Path(__file__).resolve().parent.parent
MODEL_DIR = Path(os.environ.get("BENCH_MODEL_DIR", _REPO / "models" / "mnist-lenet5"))
MAX_PIXELS = 25_000_000

# The server is pinned to one core: one torch thread, as in the service.
torch.set_num_threads(int(os.environ.get("BENCH_TORCH_THREADS", "1")))
DEVICE = os.environ.get("BENCH_DEVICE", "cpu")
loaded = load_model(MODEL_DIR, DEVICE)
classes = loaded.manifest.classes

app = FastAPI(title="plain baseline")


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ready"}


@app.post("/predict")
def predict(file: list[UploadFile]) -> dict[str, Any]:
    """Each uploaded file in turn, one forward pass per image (what a tutorial loop does)."""
    return {"model": loaded.name, "predictions": [classify(f) for f in file]}


def classify(file: UploadFile) -> dict[str, Any]:
    try:
        image = decode(file.file.read(), "file", MAX_PIXELS)
    except ServeError as exc:
        raise HTTPException(exc.status_code, exc.detail) from None
    x = loaded.preprocessor.from_image(image).unsqueeze(0).to(DEVICE)
    with torch.inference_mode():
        row = torch.softmax(loaded.model(x), dim=1)[0].tolist()
    best = max(range(len(row)), key=row.__getitem__)
    return {
        "label": classes[best],
        "class_index": best,
        "probability": row[best],
        "probabilities": dict(zip(classes, row, strict=True)),
    }
