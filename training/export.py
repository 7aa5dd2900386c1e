"""Write a model folder: weights, manifest, per-epoch history and three pictures."""

from __future__ import annotations

import csv
import platform
from pathlib import Path
from typing import Any

import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from training.calibration import ECE_BINS, figures, reliability_bins
from training.loader import sha256_file
from training.manifest import (
    MANIFEST_NAME,
    WEIGHTS_NAME,
    ArchitectureRef,
    Calibration,
    Manifest,
    Metrics,
    WeightsRef,
)
from training.preprocess import InputSpec

HISTORY_NAME = "history.csv"
CURVES_NAME = "curves.png"
CONFUSION_NAME = "confusion_matrix.png"
RELIABILITY_NAME = "reliability.png"


def library_versions() -> dict[str, str]:
    import numpy
    import PIL

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "pillow": PIL.__version__,
    }


def export_model(
    folder: Path,
    *,
    model: nn.Module,
    name: str,
    architecture: str,
    arch_config: dict[str, Any],
    input_spec: InputSpec,
    classes: list[str],
    dataset: str,
    metrics: Metrics,
    training_args: dict[str, Any],
    history: list[dict[str, float]],
    confusion: torch.Tensor | None = None,
    calibration: Calibration | None = None,
) -> Manifest:
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / WEIGHTS_NAME
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(weights))
    # safetensors writes 0600; the weights must be readable by the (non-root) user that
    # serves them, e.g. the container's uid 10001 reading a mounted models folder.
    weights.chmod(0o644)
    manifest = Manifest(
        name=name,
        architecture=ArchitectureRef(name=architecture, config=arch_config),
        input=input_spec,
        classes=classes,
        dataset=dataset,
        metrics=metrics,
        calibration=calibration or Calibration(),
        weights=WeightsRef(file=WEIGHTS_NAME, sha256=sha256_file(weights)),
        versions=library_versions(),
        training=training_args,
    )
    write_manifest(folder, manifest)
    if history:
        with (folder / HISTORY_NAME).open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(history[0]))
            writer.writeheader()
            writer.writerows(history)
        plot_curves(history, folder / CURVES_NAME, title=name)
    if confusion is not None:
        plot_confusion(confusion, classes, folder / CONFUSION_NAME, title=name)
    return manifest


def write_manifest(folder: Path, manifest: Manifest) -> None:
    (folder / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2) + "\n")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: list[dict[str, float]], path: Path, title: str) -> None:
    plt = _pyplot()
    epochs = [int(h["epoch"]) for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    ax_loss.plot(epochs, [h["test_loss"] for h in history], marker="o", label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [100 * h["test_accuracy"] for h in history], marker="o", color="C2")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy")
    best = max(history, key=lambda h: h["test_accuracy"])
    ax_acc.annotate(
        f"{100 * best['test_accuracy']:.2f}%", (best["epoch"], 100 * best["test_accuracy"])
    )
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(confusion: torch.Tensor, classes: list[str], path: Path, title: str) -> None:
    plt = _pyplot()
    cm = confusion.numpy()
    fig, ax = plt.subplots(figsize=(8, 7))
    image = ax.imshow(cm, cmap="Blues")
    fig.colorbar(image, ax=ax)
    ticks = range(len(classes))
    ax.set_xticks(ticks, classes, rotation=45, ha="right")
    ax.set_yticks(ticks, classes)
    ax.set(xlabel="predicted", ylabel="true")
    threshold = cm.max() / 2
    for i in ticks:
        for j in ticks:
            color = "white" if cm[i, j] > threshold else "black"
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7, color=color)
    accuracy = cm.trace() / max(cm.sum(), 1)
    ax.set_title(f"{title}: confusion matrix (accuracy {100 * accuracy:.2f}%)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_reliability(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float, path: Path, title: str
) -> None:
    """Reliability diagrams of the test logits as trained and divided by ``temperature``."""
    plt = _pyplot()
    panels = [("as trained", 1.0)]
    if temperature != 1.0:
        panels.append((f"temperature {temperature:.3f}", temperature))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5), squeeze=False)
    width = 1 / ECE_BINS
    centers = [(b + 0.5) * width for b in range(ECE_BINS)]
    for ax, (label, t) in zip(axes[0], panels, strict=True):
        scaled = logits / t
        count, conf, acc = reliability_bins(scaled.double().softmax(1), labels)
        filled = (count > 0).tolist()
        xs = [c for c, f in zip(centers, filled, strict=True) if f]
        accs = [a for a, f in zip(acc.tolist(), filled, strict=True) if f]
        confs = [c for c, f in zip(conf.tolist(), filled, strict=True) if f]
        ax.bar(xs, accs, width=width, edgecolor="black", color="C0", label="accuracy")
        ax.bar(xs, [c - a for c, a in zip(confs, accs, strict=True)], bottom=accs,
               width=width, fill=False, edgecolor="C3", hatch="//",
               label="gap to mean confidence")  # fmt: skip
        ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
        # Sparse bins swing widely: the image count says how much each bar weighs.
        for x, a, c, n in zip(xs, accs, confs, count[count > 0].tolist(), strict=True):
            ax.text(x, min(max(a, c), 0.97) + 0.01, f"{int(n)}", ha="center", fontsize=6)
        figs = figures(scaled, labels)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top-1 probability)",
               ylabel="accuracy", title=f"{label}: ECE {100 * figs.ece:.2f}%, "
               f"NLL {figs.nll:.3f}")  # fmt: skip
        ax.legend(loc="upper left", framealpha=0.9)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title}: reliability on {len(labels):,} test images ({ECE_BINS} bins; "
                 "the number on a bar: its images)")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
