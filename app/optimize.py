"""The forward pass the service runs: on the CPU, TorchScript frozen and optimized for
inference; on a GPU, CUDA graphs replayed.

``torch.jit.optimize_for_inference`` turns the eager model into a graph whose
convolutions run on oneDNN with their weights prepacked once, ReLU in place and the
activations kept in oneDNN's blocked layout from the first convolution to the last
pooling; linear layers get their weights pre-transposed. On one thread that halves the
LeNet-5 and Fashion-CNN forward pass at batch 64 (bench/RESULTS.md). The weights are the
loaded ones (:func:`training.loader.load_model` is still the one place they are read).

TorchScript is deprecated in favour of ``torch.compile``, which needs a C++ compiler at
run time and tens of seconds of compilation per model and shape; with torch pinned
(pyproject.toml) the TorchScript path is stable. If scripting ever fails, or the result
differs from the eager model, the eager model is served and a warning says why.
``MNIST_SERVE_OPTIMIZE=false`` turns it off (on either device).

On a GPU these models' kernels take microseconds; what costs is launching them: ~13 kernel
launches per pass, 0.23-0.4 ms of host CPU per pass at batch 1 to 64 on the H100 host
measured (bench/gpu_forward.py, bench/RESULTS.md). :class:`GraphedForward` captures the
model once per batch-size bucket (powers of two up to the batch limit) as a CUDA graph and
replays it: one launch per pass (0.08 ms at batch 1, 0.14 at 64 there). A batch is copied
into the bucket's static input (the rows past it are left as they are: in eval mode every
row is computed alone) and the first rows of the static output are returned; the caller
consumes them before the next pass (the batch worker is the only caller, one pass at a
time).
"""

from __future__ import annotations

import bisect
import copy
import logging
import warnings
from collections.abc import Callable

import torch
from torch import nn

log = logging.getLogger("app")

Forward = Callable[[torch.Tensor], torch.Tensor]

# The optimized graph sums in another order; outputs (logits) agree to ~1e-6.
TOLERANCE = 1e-4


def optimized_for_cpu(model: nn.Module, example: torch.Tensor, name: str) -> Forward:
    """``model`` scripted, frozen and optimized, checked against itself on ``example``
    (a batch of inputs); the eager model when that cannot be done."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit is deprecated"
            scripted = torch.jit.script(copy.deepcopy(model).eval())
            optimized = torch.jit.optimize_for_inference(scripted)
        with torch.inference_mode():
            want = model(example)
            got = optimized(example)
            got = optimized(example)  # the second call runs the fully optimized graph
    except Exception as exc:  # any scripting failure: serve the eager model
        log.warning("%s: serving the eager model (TorchScript failed: %s)", name, exc)
        return model
    difference = (got - want).abs().max().item() if got.shape == want.shape else float("inf")
    if not difference <= TOLERANCE:
        log.warning(
            "%s: serving the eager model (the optimized one differs by %.3g)", name, difference
        )
        return model
    return optimized


def bucket_sizes(max_batch: int) -> list[int]:
    """The batch sizes captured: powers of two below ``max_batch``, and ``max_batch``."""
    sizes = [1 << k for k in range(max_batch.bit_length()) if 1 << k < max_batch]
    return [*sizes, max_batch]


class GraphedForward:
    """``model`` on ``(n, *shape)`` CUDA inputs replayed from CUDA graphs (see the module's
    docstring); a batch over ``max_batch`` (one request with more images than the batch
    limit) runs eagerly. The output may be a view of a static buffer, valid until the next
    call."""

    def __init__(
        self, model: nn.Module, shape: tuple[int, ...], max_batch: int, device: torch.device
    ) -> None:
        self.sizes = bucket_sizes(max_batch)
        self._model: Forward = model
        self._input = torch.zeros(max_batch, *shape, device=device)
        self._graphs: list[tuple[torch.cuda.CUDAGraph, torch.Tensor]] = []
        with torch.inference_mode():
            # Warm-up on a side stream (cuDNN/cuBLAS choose and allocate here), as
            # torch.cuda.graph requires.
            side = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for n in self.sizes:
                    for _ in range(2):
                        model(self._input[:n])
            torch.cuda.current_stream(device).wait_stream(side)
            for n in self.sizes:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    out = model(self._input[:n])
                self._graphs.append((graph, out))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        index = bisect.bisect_left(self.sizes, n)
        if index == len(self._graphs):  # one request larger than the batch limit
            return self._model(x)
        graph, out = self._graphs[index]
        self._input[:n].copy_(x, non_blocking=True)
        graph.replay()
        return out[:n]


def graphed_for_cuda(
    model: nn.Module, shape: tuple[int, ...], max_batch: int, device: torch.device, name: str
) -> Forward:
    """``model`` as a :class:`GraphedForward`, checked against itself on random batches of
    several sizes; the eager model when capture fails or the results differ."""
    try:
        graphed = GraphedForward(model, shape, max_batch, device)
        generator = torch.Generator().manual_seed(0)
        difference = 0.0
        with torch.inference_mode():
            for n in sorted({n for n in (1, 3, max_batch // 2 + 1, max_batch) if n <= max_batch}):
                x = torch.randn(n, *shape, generator=generator).to(device)
                want = model(x)
                got = graphed(x)
                difference = max(difference, (got - want).abs().max().item())
    except Exception as exc:  # capture is not possible for every model or driver
        log.warning("%s: serving the eager model (CUDA graph capture failed: %s)", name, exc)
        return model
    if not difference <= TOLERANCE:
        log.warning(
            "%s: serving the eager model (the CUDA graphs differ by %.3g)", name, difference
        )
        return model
    return graphed
