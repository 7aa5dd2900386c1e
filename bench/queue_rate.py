"""Images per second one batch worker achieves on 28x28 digits: the starting rate of the
automatic queue bound (``MNIST_SERVE_MAX_QUEUE_IMAGES`` unset: one second of work at the
measured rate; app/admission.py's ``INITIAL_RATE``).

    taskset -c 0 python bench/queue_rate.py [--model mnist-lenet5] [--seconds 10]

Loads the model as the service does (one torch thread, ONNX Runtime on the CPU) and keeps
its batch engine busy with 64-image jobs of MNIST test PNGs, each job ``/predict``'s own
prepare (decode, fit) and encoder, so a batch holds one job, as under overload with 64-file
uploads. Prints images/s over the run, images per CPU second (which a busy machine does not
change), and the engine's own smoothed estimate (what ``Retry-After`` is computed from). No
HTTP: the queue bound is about the worker's work.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import time
from functools import partial
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.config import Settings
from app.metrics import Metrics
from app.registry import Registry
from app.routes.predict import encode
from app.testing import REPO
from training.datasets import load_split


def pngs(n: int) -> list[tuple[str, bytes]]:
    split = load_split("mnist", train=False)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(split.images[i, 0].numpy()).save(buf, "PNG")
        out.append((f"file #{i + 1}", buf.getvalue()))
    return out


async def drive(
    registry: Registry, model: str, files: int, seconds: float
) -> tuple[int, float, float]:
    serving = registry.get(model)
    uploads = pngs(files)
    pipeline, engine = serving.pipeline, serving.engine
    done = 0

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await engine.submit(
                partial(pipeline.prepare, uploads, "auto"),
                partial(encode, pipeline, None, False),
                files,
            )
            done += files

    start, cpu = time.perf_counter(), time.process_time()
    deadline = start + seconds
    await asyncio.gather(*(client() for _ in range(4)))  # always a job waiting
    return done, time.perf_counter() - start, time.process_time() - cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="mnist-lenet5")
    ap.add_argument("--files", type=int, default=64, help="images per job (and per batch)")
    ap.add_argument("--seconds", type=float, default=10)
    args = ap.parse_args()

    torch.set_num_threads(1)
    settings = Settings(
        models_dir=REPO / "models", models=[args.model], default_model=args.model,
        device="cpu", torch_threads=1, max_batch_size=args.files, max_queue_images=0,
    )  # fmt: skip
    registry = Registry(settings, Metrics())
    registry.load(torch.device("cpu"))
    try:
        asyncio.run(drive(registry, args.model, args.files, 2))  # warm-up
        images, secs, cpu = asyncio.run(drive(registry, args.model, args.files, args.seconds))
        rate = registry.get(args.model).engine.admission.rate() or 0.0
    finally:
        registry.close()
    print(
        f"{args.model}, {args.files}-image batches, one torch thread: {images / secs:,.0f} "
        f"images/s over {secs:.1f} s; {images / cpu:,.0f} images per CPU second (the figure "
        f"on a core of its own); the engine's smoothed estimate at the end {rate:,.0f} images/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
