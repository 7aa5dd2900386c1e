"""Stage 4's fast forms: the model as ONNX Runtime runs it on the CPU, or replayed from CUDA
graphs on a GPU, each checked against the eager model at start-up.

These networks are small enough that a framework's per-operation cost is most of a small
batch's forward pass. On the CPU, :class:`OnnxForward` exports the loaded model once (the
batch dimension dynamic) and runs it in ONNX Runtime, a sixth of torch's per-call cost at
batch 1 (docs/decisions/0001-onnx-runtime-on-cpu.md). The export is torch.onnx's
TorchScript-based one (``dynamo=False``): fast and small at start-up, and stable with torch
pinned. On a GPU, :class:`GraphedForward` captures the model once per batch-size bucket as a
CUDA graph: one launch per pass instead of one per layer
(docs/decisions/0002-cuda-graphs-on-gpu.md).

If an optimized form fails to build or differs from the eager model, the eager model is
served and a warning says why. ``MNIST_SERVE_OPTIMIZE=false`` turns both off. The weights
are always the loaded ones (:func:`training.loader.load_model` is the one place they are read).
"""

from __future__ import annotations

import bisect
import copy
import io
import logging
import warnings
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

log = logging.getLogger("app")

Forward = Callable[[torch.Tensor], torch.Tensor]

# The optimized graph sums in another order; outputs (logits) agree to ~1e-6.
TOLERANCE = 1e-4


class OnnxForward:
    """``model`` exported to ONNX and run by ONNX Runtime on the CPU (see the module's
    docstring); ``example`` is a batch of inputs of the shape the model takes (its first
    dimension, the batch, may then be any size). Safe to call from several threads."""

    def __init__(self, model: nn.Module, example: torch.Tensor) -> None:
        import onnxruntime as ort  # only the CPU path needs it

        onnx_model = io.BytesIO()
        with warnings.catch_warnings():
            # "the TorchScript-based exporter is deprecated": chosen anyway (module docstring).
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                copy.deepcopy(model).eval(),
                (example,),
                onnx_model,  # type: ignore[arg-type]  # a file object: fine, if unannotated
                dynamo=False,
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            )
        options = ort.SessionOptions()
        # Its own intra-op threads, as many as torch's; idle ones sleep instead of spinning
        # on a core the event loop needs.
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            onnx_model.getvalue(), options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        (out,) = self._session.run(None, {self._input: x.contiguous().numpy()})
        return torch.from_numpy(out)


def _checked(
    model: nn.Module,
    build: Callable[[], Forward],
    batches: Callable[[], Iterable[torch.Tensor]],
    name: str,
    failure: str,
    difference_is: str,
) -> Forward:
    """``build()`` if it computes what ``model`` does (within :data:`TOLERANCE`) on every one
    of ``batches()``; else the eager model, with a warning that says why: ``failure`` names
    what raised, ``difference_is`` what differed."""
    try:
        optimized = build()
        difference = 0.0
        with torch.inference_mode():
            for x in batches():
                want, got = model(x), optimized(x)
                if got.shape != want.shape:
                    difference = float("inf")
                    break
                difference = max(difference, (got - want).abs().max().item())
    except Exception as exc:  # any export, capture or runtime failure: serve the eager model
        log.warning("%s: serving the eager model (%s failed: %s)", name, failure, exc)
        return model
    if not difference <= TOLERANCE:
        log.warning("%s: serving the eager model (%s by %.3g)", name, difference_is, difference)
        return model
    return optimized


def optimized_for_cpu(model: nn.Module, example: torch.Tensor, name: str) -> Forward:
    """``model`` as an :class:`OnnxForward`, checked against itself on ``example`` and on its
    first row (another batch size); the eager model when that cannot be done."""
    return _checked(
        model,
        lambda: OnnxForward(model, example),
        lambda: (example, example[:1]),
        name,
        "ONNX export or Runtime",
        "the optimized one differs",
    )


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

    def batches() -> Iterator[torch.Tensor]:
        generator = torch.Generator().manual_seed(0)
        for n in sorted({n for n in (1, 3, max_batch // 2 + 1, max_batch) if n <= max_batch}):
            yield torch.randn(n, *shape, generator=generator).to(device)

    return _checked(
        model,
        lambda: GraphedForward(model, shape, max_batch, device),
        batches,
        name,
        "CUDA graph capture",
        "the CUDA graphs differ",
    )
