"""Per-image micro-timings of the /predict hot path, stage by stage (app/pipeline.py).

    taskset -c 0 .venv/bin/python bench/micro.py [--repeat 7]

Times, for 28x28 MNIST test PNGs and the shipped mnist-lenet5 preprocessing (one torch
thread): decode (the service's, which takes the libspng path for these), Pillow's open +
load and to_grayscale (the path every other image takes), the normalization's
"dataset-shaped?" check, image_to_uint8, the transform on one image, ``from_image`` per
image, ``from_images`` on 64 images, decode + preprocess of a whole 64-file request (the
pipeline's ``prepare`` and ``transform``), the forward pass at batch 64 and 1 (eager, and
as the service runs it: app/optimize.py), multipart parsing of a 64-file body
(app/uploads.py) and /predict's JSON encoding of 64 rows.
Each figure is the best of ``--repeat`` runs, in microseconds per image.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import timeit
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.batching import Output
from app.imaging import decode
from app.optimize import optimized_for_cpu
from app.pipeline import Pipeline
from app.routes.predict import encode
from training.datasets import load_split
from training.loader import load_model
from training.normalize import looks_dataset_shaped, normalize
from training.preprocess import image_to_uint8, to_grayscale

REPO = Path(__file__).resolve().parent.parent
N = 64
MAX_PIXELS = 25_000_000


def _pngs(n: int) -> list[bytes]:
    split = load_split("mnist", train=False)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(split.images[i, 0].numpy()).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def _multipart(pngs: list[bytes]) -> tuple[bytes, str]:
    boundary = "benchboundary0123456789"
    parts = []
    for i, data in enumerate(pngs):
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{i}.png"\r\nContent-Type: image/png\r\n\r\n'.encode()
            + data
            + b"\r\n"
        )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _parse_multipart(body: bytes, content_type: str, chunk: int = 65536) -> int:
    """The service's multipart reader (app/uploads.py) over ``body`` in ``chunk``-byte
    messages, as uvicorn delivers it."""
    from app.uploads import read_multipart

    async def run() -> int:
        async def stream() -> AsyncIterator[bytes]:
            for i in range(0, len(body), chunk):
                yield body[i : i + chunk]

        uploads = await read_multipart(content_type, stream(), max_files=1000)
        return sum(len(data) for _, data in uploads)

    return asyncio.run(run())


def _pillow_decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def inputs(uploads: list[tuple[str, bytes]], pipeline: Pipeline) -> torch.Tensor:
    """What the batch worker makes of one request: ``prepare``, then ``transform``."""
    return pipeline.transform(pipeline.prepare(uploads))


def best_us(fn: Any, per: int, repeat: int, number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / (number * per) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    loaded = load_model(REPO / "models" / "mnist-lenet5", "cpu")
    pre = loaded.preprocessor
    pipeline = Pipeline(loaded, loaded.model, MAX_PIXELS)
    fit = pre.spec.fit
    pngs = _pngs(N)
    images = [decode(d, "f", MAX_PIXELS) for d in pngs]  # pixels: the fast PNG path
    pillow = [_pillow_decode(d) for d in pngs]
    grays = [to_grayscale(im) for im in pillow]
    arrays = [np.asarray(g, dtype=np.uint8) for g in grays]
    tensors = [image_to_uint8(a) for a in arrays]
    stacked = torch.stack(tensors)
    uploads = [(f"file #{i}", d) for i, d in enumerate(pngs)]
    r = args.repeat

    def each(fn: Any, items: list[Any]) -> Any:
        return lambda: [fn(x) for x in items]

    rows: list[tuple[str, float]] = [
        ("decode (28x28 PNG)", best_us(each(lambda d: decode(d, "f", MAX_PIXELS), pngs), N, r, 5)),
        ("Pillow open + load (28x28 PNG)", best_us(each(_pillow_decode, pngs), N, r, 5)),
        ("to_grayscale (Pillow image)", best_us(each(to_grayscale, pillow), N, r, 20)),
        ("looks_dataset_shaped", best_us(each(looks_dataset_shaped, arrays), N, r, 20)),
        ("normalize(auto) on 28x28", best_us(each(lambda a: normalize(a, fit), arrays), N, r, 20)),
        ("image_to_uint8", best_us(each(image_to_uint8, arrays), N, r, 20)),
        ("transform, one (1,28,28) image", best_us(each(pre.transform, tensors), N, r, 5)),
        ("transform, one (64,1,28,28) batch", best_us(lambda: pre.transform(stacked), N, r, 50)),
        ("from_image(auto), per image", best_us(each(pre.from_image, images), N, r, 5)),
    ]
    if hasattr(pre, "from_images"):
        rows.append(
            ("from_images(auto), 64 images", best_us(lambda: pre.from_images(images), N, r, 20))
        )
    rows.append(
        (
            "decode + preprocess, 64-file request",
            best_us(lambda: inputs(uploads, pipeline), N, r, 5),
        )
    )
    x = inputs(uploads, pipeline)
    with torch.inference_mode():
        probs = torch.softmax(loaded.model(x), dim=1)
    spec = pre.spec
    example = torch.randn(8, spec.channels, spec.height, spec.width)
    served = optimized_for_cpu(loaded.model, example, loaded.name)
    with torch.inference_mode():
        for label, model in (("eager", loaded.model), ("optimized", served)):
            for batch in (x, x[:1]):
                rows.append(
                    (
                        f"forward + softmax, batch of {len(batch)} ({label})",
                        best_us(lambda m=model, b=batch: torch.softmax(m(b), 1), len(batch), r, 20),
                    )
                )
    output = Output(x, probs)
    rows.append(
        ("encode JSON, 64 rows", best_us(lambda: encode(pipeline, None, False, output), N, r, 50))
    )
    body, ctype = _multipart(pngs)
    rows.append(
        ("multipart parse, 64 files", best_us(lambda: _parse_multipart(body, ctype), N, r, 20))
    )
    width = max(len(name) for name, _ in rows)
    print(f"{'step':<{width}}  us/image")
    for name, us in rows:
        print(f"{name:<{width}}  {us:8.2f}")


if __name__ == "__main__":
    main()
