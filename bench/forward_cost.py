"""Forward-pass cost per image of model folders, side by side, on one CPU thread.

    taskset -c 0 .venv/bin/python bench/forward_cost.py models/fashion-cnn OTHER_FOLDER...

For each folder: forward + softmax at batch 1 and 64, eager (the loaded module) and as the
service runs it (app/optimize.py: ONNX Runtime), on random inputs of the model's size.
The folders are timed in turns within each round, so a busy stretch of a shared machine
hits them alike; each figure is the best round, in microseconds per image.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.optimize import optimized_for_cpu
from training.loader import load_model

BATCHES = (1, 64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    runners: list[tuple[str, str, int, Any, torch.Tensor]] = []
    for folder in args.folders:
        loaded = load_model(folder, "cpu")
        spec = loaded.manifest.input
        shape = (spec.channels, spec.height, spec.width)
        served = optimized_for_cpu(loaded.model, torch.randn(8, *shape), loaded.name)
        for label, model in (("eager", loaded.model), ("optimized", served)):
            for batch in BATCHES:
                x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(batch))
                runners.append((str(folder), label, batch, model, x))
    best = [float("inf")] * len(runners)
    with torch.inference_mode():
        for _ in range(args.rounds):
            for i, (_, _, batch, model, x) in enumerate(runners):
                number = max(1, 640 // batch)
                seconds = timeit.timeit(lambda m=model, b=x: torch.softmax(m(b), 1), number=number)
                best[i] = min(best[i], seconds / (number * batch) * 1e6)
    width = max(len(str(f)) for f in args.folders)
    print(f"{'model folder':<{width}}  {'runner':<9}  batch  us/image")
    for (folder, label, batch, _, _), us in zip(runners, best, strict=True):
        print(f"{folder:<{width}}  {label:<9}  {batch:5d}  {us:8.1f}")


if __name__ == "__main__":
    main()
