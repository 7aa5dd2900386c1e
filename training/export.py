"""Write a model folder: weights, manifest, per-epoch history and two pictures."""

from __future__ import annotations

import csv
import platform
from pathlib import Path
from typing import Any

import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from training.loader import sha256_file
from training.manifest import (
    MANIFEST_NAME,
    WEIGHTS_NAME,
    ArchitectureRef,
    Manifest,
    Metrics,
    WeightsRef,
)
from training.preprocess import InputSpec

HISTORY_NAME = "history.csv"
CURVES_NAME = "curves.png"
CONFUSION_NAME = "confusion_matrix.png"


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
        weights=WeightsRef(file=WEIGHTS_NAME, sha256=sha256_file(weights)),
        versions=library_versions(),
        training=training_args,
    )
    (folder / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2) + "\n")
    if history:
        with (folder / HISTORY_NAME).open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(history[0]))
            writer.writeheader()
            writer.writerows(history)
        plot_curves(history, folder / CURVES_NAME, title=name)
    if confusion is not None:
        plot_confusion(confusion, classes, folder / CONFUSION_NAME, title=name)
    return manifest


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
