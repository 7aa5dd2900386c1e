"""``train_one_epoch`` and ``evaluate`` over in-memory tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from training.augment import Augment
from training.calibration import CalibrationFigures, figures
from training.datasets import Split
from training.preprocess import Preprocessor


@dataclass
class EvalResult:
    loss: float  # mean cross-entropy, i.e. the NLL
    accuracy: float
    predictions: torch.Tensor  # (N,) predicted class per sample, on the CPU
    confusion: torch.Tensor  # (classes, classes): rows true, columns predicted
    logits: torch.Tensor  # (N, classes) on the CPU
    labels: torch.Tensor  # (N,) on the CPU

    @property
    def calibration(self) -> CalibrationFigures:
        """Accuracy, ECE, NLL, Brier score and mean confidence of these logits."""
        return figures(self.logits, self.labels)

    def per_class_accuracy(self) -> list[float]:
        totals = self.confusion.sum(1).clamp(min=1)
        return (self.confusion.diag().double() / totals).tolist()


def train_one_epoch(
    model: nn.Module,
    data: Split,
    preprocess: Preprocessor,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    batch_size: int,
    generator: torch.Generator,
    augment: Augment | None = None,
    label_smoothing: float = 0.0,
    desc: str = "train",
    ema: AveragedModel | None = None,
) -> float:
    """One pass over ``data`` in a seeded random order; returns the mean training loss."""
    model.train()
    device = data.images.device
    order = torch.randperm(len(data), generator=generator, device=generator.device).to(device)
    total, count = 0.0, 0
    bar = tqdm(range(0, len(data), batch_size), desc=desc, leave=False, unit="batch")
    for start in bar:
        idx = order[start : start + batch_size]
        x = data.images[idx]
        if augment is not None and augment.active:
            x = augment(x.float() / 255.0, generator)
        x, y = preprocess(x), data.labels[idx]
        loss = F.cross_entropy(model(x), y, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        total += loss.item() * len(idx)
        count += len(idx)
        bar.set_postfix(loss=f"{total / count:.4f}")
    return total / max(count, 1)


@torch.inference_mode()
def evaluate(
    model: nn.Module, data: Split, preprocess: Preprocessor, batch_size: int = 1000
) -> EvalResult:
    """Loss, accuracy and confusion matrix of ``model`` on ``data`` (eval mode)."""
    model.eval()
    losses, outputs = [], []
    for start in range(0, len(data), batch_size):
        x = preprocess(data.images[start : start + batch_size])
        logits = model(x)
        y = data.labels[start : start + batch_size]
        losses.append(F.cross_entropy(logits, y, reduction="sum"))
        outputs.append(logits.float())
    all_logits = torch.cat(outputs).cpu()
    pred = all_logits.argmax(1)
    labels = data.labels.cpu()
    n_classes = int(max(int(labels.max()), int(pred.max())) + 1)
    n_classes = max(n_classes, _num_outputs(model))
    confusion = torch.bincount(labels * n_classes + pred, minlength=n_classes**2)
    return EvalResult(
        loss=float(torch.stack(losses).sum()) / len(data),
        accuracy=float((pred == labels).double().mean()),
        predictions=pred,
        confusion=confusion.reshape(n_classes, n_classes),
        logits=all_logits,
        labels=labels,
    )


def _num_outputs(model: nn.Module) -> int:
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    return int(last.out_features)
