"""The service's forward pass on a GPU, by batch size, and where its time goes.

    python bench/gpu_forward.py [--model mnist-lenet5] [--repeat 200]

Times :meth:`app.batching.BatchEngine.forward` (pinned copy in, model, softmax, copy of the
probabilities back) on ``cuda`` at batch sizes 1 to 256, wall clock per call as a batch
worker sees it (median of ``--repeat`` calls after a warm-up), and beside it the parts: the
copy in alone, the model and softmax alone (inputs already on the GPU, synchronized), and
the copy back alone; the CPU time the calling thread spends per call (a synchronizing
copy spin-waits by default), against the same pass waited for by a blocking CUDA event;
and the pass as the service runs it by default, replayed from CUDA graphs
(app/optimize.py). The first columns are the eager model.
One torch thread, as in the service. Prints microseconds per call and per image.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.optimize import graphed_for_cuda
from app.pipeline import Pipeline
from training.loader import load_model

REPO = Path(__file__).resolve().parent.parent


def median_us(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Median wall time and mean CPU time of the calling thread, in microseconds per call."""
    for _ in range(20):
        fn()
    times = []
    cpu0 = time.thread_time()
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6, (time.thread_time() - cpu0) / repeat * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="mnist-lenet5")
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--sizes", default="1,4,16,64,256")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("needs CUDA")
    torch.set_num_threads(1)
    device = torch.device("cuda")
    loaded = load_model(REPO / "models" / args.model, device)
    spec = loaded.manifest.input
    shape = (spec.channels, spec.height, spec.width)
    engine = Pipeline(loaded, loaded.model, 25_000_000)  # the eager model
    graphed = Pipeline(
        loaded, graphed_for_cuda(loaded.model, shape, 256, device, args.model), 25_000_000
    )
    print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}; {args.model}")
    print(
        f"{'batch':>5} {'forward us':>10} {'us/image':>9} {'CPU us':>7} {'copy in':>8} "
        f"{'model+softmax':>13} {'copy back':>9} {'blocking sync':>13} {'CPU us':>7} "
        f"{'graphed':>8} {'CPU us':>7}"
    )
    for n in (int(s) for s in args.sizes.split(",")):
        x = torch.randn(n, *shape)
        on_gpu = x.to(device)

        def copy_in(x: torch.Tensor = x) -> None:
            x.pin_memory().to(device, non_blocking=True)
            torch.cuda.synchronize()

        def model(on_gpu: torch.Tensor = on_gpu) -> None:
            with torch.inference_mode():
                torch.softmax(engine.model(on_gpu).float(), dim=1)
            torch.cuda.synchronize()

        with torch.inference_mode():
            probs = torch.softmax(engine.model(on_gpu).float(), dim=1)

        def copy_back(probs: torch.Tensor = probs) -> None:
            probs.cpu()

        def forward(x: torch.Tensor = x) -> None:
            engine.forward(x)

        def blocking(x: torch.Tensor = x) -> None:
            # The same pass, waited for by a blocking event instead of .cpu()'s spin.
            with torch.inference_mode():
                xg = x.pin_memory().to(device, non_blocking=True)
                out = torch.softmax(engine.model(xg).float(), dim=1)
                out.to("cpu", non_blocking=True)
                done = torch.cuda.Event(blocking=True)  # type: ignore[no-untyped-call]
                done.record()
                done.synchronize()

        whole, cpu = median_us(forward, args.repeat)
        parts = [median_us(f, args.repeat)[0] for f in (copy_in, model, copy_back)]
        block, block_cpu = median_us(blocking, args.repeat)

        def replayed(x: torch.Tensor = x) -> None:
            graphed.forward(x)

        graph, graph_cpu = median_us(replayed, args.repeat)
        print(
            f"{n:>5} {whole:>10.1f} {whole / n:>9.2f} {cpu:>7.1f} {parts[0]:>8.1f} "
            f"{parts[1]:>13.1f} {parts[2]:>9.1f} {block:>13.1f} {block_cpu:>7.1f} "
            f"{graph:>8.1f} {graph_cpu:>7.1f}"
        )


if __name__ == "__main__":
    main()
