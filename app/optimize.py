"""The forward pass the service runs on the CPU: TorchScript, frozen and optimized for
inference.

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
``MNIST_SERVE_OPTIMIZE=false`` turns it off.
"""

from __future__ import annotations

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
