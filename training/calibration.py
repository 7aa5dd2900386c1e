"""Temperature scaling (Guo et al., 2017) and the figures that say how well it worked.

A classifier trained with cross-entropy is often over- or underconfident: its top softmax
probability is not the rate at which it is right. Dividing the logits by one scalar
``T`` fitted on held-out images fixes most of that without changing a single prediction
(the argmax of ``z / T`` is the argmax of ``z``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Top-1 expected calibration error over 15 equal-width confidence bins, as in Guo et al.
ECE_BINS = 15


@dataclass(frozen=True)
class CalibrationFigures:
    accuracy: float
    ece: float  # top-1, ECE_BINS equal-width bins, in [0, 1]
    nll: float  # mean negative log-likelihood of the true class (cross-entropy)
    brier: float  # squared distance of the probability vector from one-hot (summed over classes)
    mean_confidence: float

    def rounded(self) -> dict[str, float]:
        return {k: round(v, 6) for k, v in self.__dict__.items()}


def reliability_bins(
    probs: torch.Tensor, labels: torch.Tensor, n_bins: int = ECE_BINS
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per bin of top-1 confidence: (count, mean confidence, accuracy); empty bins are 0."""
    conf, pred = probs.max(1)
    correct = (pred == labels).double()
    # Bin b holds confidences in (b/n, (b+1)/n]; a confidence of exactly 0 cannot occur.
    index = (conf.double() * n_bins).ceil().long().clamp(1, n_bins) - 1
    count = torch.bincount(index, minlength=n_bins).double()
    conf_sum = torch.bincount(index, weights=conf.double(), minlength=n_bins)
    correct_sum = torch.bincount(index, weights=correct, minlength=n_bins)
    safe = count.clamp(min=1)
    return count, conf_sum / safe, correct_sum / safe


def figures(
    logits: torch.Tensor, labels: torch.Tensor, n_bins: int = ECE_BINS
) -> CalibrationFigures:
    """Accuracy, ECE, NLL, Brier score and mean confidence of ``logits`` (N, classes)."""
    logits, labels = logits.double().cpu(), labels.cpu()
    probs = logits.softmax(1)
    count, conf, acc = reliability_bins(probs, labels, n_bins)
    ece = float((count * (conf - acc).abs()).sum() / max(len(labels), 1))
    onehot = F.one_hot(labels, probs.shape[1]).double()
    return CalibrationFigures(
        accuracy=float((probs.argmax(1) == labels).double().mean()),
        ece=ece,
        nll=float(F.cross_entropy(logits, labels)),
        brier=float(((probs - onehot) ** 2).sum(1).mean()),
        mean_confidence=float(probs.max(1).values.mean()),
    )


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The ``T > 0`` that minimizes the NLL of ``logits / T`` on ``labels``.

    L-BFGS on ``log T`` keeps ``T`` positive; the NLL is convex in ``1 / T``, so the
    optimum is unique and a few iterations from ``T = 1`` reach it.
    """
    logits, labels = logits.detach().double().cpu(), labels.cpu()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [log_t], lr=0.1, max_iter=200, tolerance_grad=1e-10, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    optimizer.step(closure)  # type: ignore[no-untyped-call]
    return float(log_t.detach().exp())


def last_linear(model: nn.Module) -> nn.Linear:
    """The layer that produces the logits: every architecture ends in an ``nn.Linear``."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear to scale")
    return linears[-1]


@torch.no_grad()
def fold_temperature(model: nn.Module, temperature: float) -> None:
    """Divide the logits by ``temperature`` by scaling the last layer's weight and bias.

    ``(W x + b) / T == (W / T) x + b / T``: the model then returns calibrated logits with no
    extra operation, so every runner built from it (eager, ONNX export, CUDA graphs)
    serves the calibrated probabilities.
    """
    if temperature == 1.0:
        return
    layer = last_linear(model)
    layer.weight.div_(temperature)
    if layer.bias is not None:
        layer.bias.div_(temperature)
