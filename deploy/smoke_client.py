"""POST real test images to a running mnist-serve and check its answers (used by smoke.sh).

    python deploy/smoke_client.py http://127.0.0.1:8000 [--count 64]

For each shipped model given (default: mnist-lenet5 on MNIST, fashion-mlp on Fashion-MNIST),
sends the first ``--count`` images of the test split as PNG files in one multipart request and
checks that every predicted label equals what the same model, loaded here with
``training.loader``, predicts for the same PNG (the same weights and preprocessing inside the
container as outside), and that the accuracy against the true labels is at least ``--min-acc``.
Exit 0 when every check holds.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import httpx
import torch
from PIL import Image

from training.datasets import load_split
from training.loader import load_model

REPO = Path(__file__).resolve().parent.parent
CHECKS = {"mnist-lenet5": "mnist", "fashion-mlp": "fashion-mnist"}


def png(image: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image.squeeze(0).numpy()).save(buf, "PNG")
    return buf.getvalue()


def check(url: str, model: str, dataset: str, count: int, min_acc: float) -> bool:
    split = load_split(dataset, train=False)
    images, labels = split.images[:count], split.labels[:count]
    files = [png(img) for img in images]
    local = load_model(REPO / "models" / model, "cpu")
    classes = local.manifest.classes
    with torch.no_grad():
        batch = torch.stack(
            [local.preprocessor.from_image(Image.open(io.BytesIO(f))) for f in files]
        )
        expected = [classes[i] for i in local.model(batch).argmax(1).tolist()]
    response = httpx.post(
        f"{url}/predict",
        params={"model": model},
        files=[("file", (f"{i}.png", f, "image/png")) for i, f in enumerate(files)],
        timeout=60,
    )
    response.raise_for_status()
    body = response.json()
    got = [p["label"] for p in body["predictions"]]
    truth = [classes[int(y)] for y in labels]
    same = sum(g == e for g, e in zip(got, expected, strict=True))
    accuracy = sum(g == t for g, t in zip(got, truth, strict=True)) / count
    ok = body["model"] == model and same == count and accuracy >= min_acc
    print(
        f"{'ok  ' if ok else 'FAIL'} {model}: {count} {dataset} test PNGs, "
        f"{same}/{count} equal to the local model, accuracy {accuracy:.2%} "
        f"(first labels {' '.join(got[:12])})"
    )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    # 64 = MNIST_SERVE_MAX_FILES's default: one request holds them all.
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--min-acc", type=float, default=0.8)
    parser.add_argument("--model", action="append", choices=sorted(CHECKS))
    args = parser.parse_args()
    results = [
        check(args.url, m, CHECKS[m], args.count, args.min_acc) for m in args.model or CHECKS
    ]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
