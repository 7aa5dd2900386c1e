"""Train one model on in-memory tensors and export it as a model folder."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from training.architectures import build_model, get_architecture
from training.augment import AUGMENTS
from training.calibration import figures, fit_temperature
from training.datasets import Split, channel_stats, get_dataset, load_split, validation_split
from training.device import resolve_device
from training.engine import EvalResult, evaluate, train_one_epoch
from training.export import RELIABILITY_NAME, export_model, plot_reliability
from training.manifest import Calibration, Manifest, Metrics
from training.normalize import FIT_FOR_DATASET
from training.preprocess import InputSpec, Preprocessor


@dataclass
class TrainConfig:
    name: str
    dataset: str
    arch: str
    arch_config: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 128
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = 1e-3
    momentum: float = 0.9  # SGD only
    weight_decay: float = 1e-4
    schedule: Literal["none", "cosine", "onecycle", "step"] = "onecycle"
    label_smoothing: float = 0.0
    augment: str = "none"
    # Training images held out to fit the temperature (training/calibration.py); 0 trains on
    # all of them and leaves the model uncalibrated.
    val_size: int = 0
    # Decay of an exponential moving average of the weights (and batch-norm statistics),
    # which is what gets evaluated and exported; 0 exports the last weights.
    ema_decay: float = 0.0
    seed: int = 0
    device: str = "auto"
    out_dir: Path = Path("models")
    data_dir: Path | None = None
    download: bool = False
    limit_train: int | None = None  # a smoke run on the first N training images
    limit_test: int | None = None

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        # Paths of the machine that trained it are not metadata of the model.
        del d["out_dir"], d["data_dir"]
        return d


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
            nesterov=cfg.momentum > 0, weight_decay=cfg.weight_decay,
        )  # fmt: skip
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(
    cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Stepped once per batch."""
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if cfg.schedule == "step":  # x0.1 at 50% and 75% of training
        milestones = [total // 2, total * 3 // 4]
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    return None


def seed_everything(seed: int, device: torch.device) -> torch.Generator:
    torch.manual_seed(seed)
    if device.type == "cpu":
        # Bit-for-bit repeatable on the CPU; CUDA kernels trade that for speed.
        torch.use_deterministic_algorithms(True)
    return torch.Generator(device=device).manual_seed(seed)


def input_spec_for(arch: str, train: Split, dataset: str | None = None) -> InputSpec:
    height, width = get_architecture(arch).input_size
    mean, std = channel_stats(train.images)
    return InputSpec(
        height=height, width=width, mean=[round(mean, 4)], std=[round(std, 4)],
        fit=FIT_FOR_DATASET.get(dataset or "", "none"),
    )  # fmt: skip


def run(cfg: TrainConfig, log: Any = print) -> tuple[Manifest, nn.Module]:
    """Train ``cfg.arch`` on ``cfg.dataset`` and export ``<out_dir>/<name>/``."""
    device = resolve_device(cfg.device)
    generator = seed_everything(cfg.seed, device)
    spec = get_dataset(cfg.dataset)
    train = load_split(cfg.dataset, True, cfg.data_dir, cfg.download)
    test = load_split(cfg.dataset, False, cfg.data_dir, cfg.download)
    if cfg.limit_train:
        train = train.subset(cfg.limit_train)
    val = None
    if cfg.val_size:
        train, val = validation_split(train, cfg.val_size, cfg.seed)
    if cfg.limit_test:
        test = test.subset(cfg.limit_test)
    input_spec = input_spec_for(cfg.arch, train, cfg.dataset)
    preprocess = Preprocessor(input_spec)
    # The whole dataset lives on the training device; batches are index slices.
    train = Split(train.images.to(device), train.labels.to(device))
    test = Split(test.images.to(device), test.labels.to(device))
    if val is not None:
        val = Split(val.images.to(device), val.labels.to(device))

    arch_config = {**get_architecture(cfg.arch).config, **cfg.arch_config}
    model = build_model(cfg.arch, arch_config, len(spec.classes)).to(device)
    ema = None
    if cfg.ema_decay:
        ema = AveragedModel(
            model,
            multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay),  # type: ignore[no-untyped-call]
            use_buffers=True,
        )
    final = model if ema is None else ema.module
    optimizer = make_optimizer(cfg, model)
    steps = -(-len(train) // cfg.batch_size)
    scheduler = make_scheduler(cfg, optimizer, steps)
    augment = AUGMENTS[cfg.augment]
    params = sum(p.numel() for p in model.parameters())
    log(f"{cfg.name}: {cfg.arch} ({params:,} parameters) on {cfg.dataset}, "
        f"{len(train):,} train / {len(test):,} test images, device {device}")  # fmt: skip

    history: list[dict[str, float]] = []
    started = time.perf_counter()
    result = evaluate(final, test, preprocess)
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        train_loss = train_one_epoch(
            model, train, preprocess, optimizer, scheduler, cfg.batch_size, generator,
            augment, cfg.label_smoothing, desc=f"epoch {epoch}/{cfg.epochs}", ema=ema,
        )  # fmt: skip
        result = evaluate(final, test, preprocess)
        seconds = time.perf_counter() - t0
        history.append({
            "epoch": epoch, "train_loss": round(train_loss, 6), "test_loss": round(result.loss, 6),
            "test_accuracy": round(result.accuracy, 6), "seconds": round(seconds, 2),
        })  # fmt: skip
        log(f"epoch {epoch:3d}  train loss {train_loss:.4f}  test loss {result.loss:.4f}  "
            f"test accuracy {100 * result.accuracy:.2f}%  ({seconds:.1f}s)")  # fmt: skip
    wall = time.perf_counter() - started

    calibration = Calibration()
    if val is not None:
        calibration = fit_calibration(
            evaluate(final, val, preprocess), result, cfg.seed, held_out=True
        )
        log(f"temperature {calibration.temperature:.4f} (fitted on {len(val):,} held-out "
            f"training images)")  # fmt: skip
    metrics = served_metrics(result, calibration.temperature, cfg.epochs)
    training_args = {**cfg.as_dict(), "device": str(device), "train_seconds": round(wall, 1)}
    folder = cfg.out_dir / cfg.name
    manifest = export_model(
        folder, model=final, name=cfg.name, architecture=cfg.arch,
        arch_config=arch_config, input_spec=input_spec, classes=list(spec.classes),
        dataset=cfg.dataset, metrics=metrics, training_args=training_args, history=history,
        confusion=result.confusion, calibration=calibration,
    )  # fmt: skip
    plot_reliability(
        result.logits, result.labels, calibration.temperature, folder / RELIABILITY_NAME, cfg.name
    )
    log(f"exported {folder} (test accuracy {100 * result.accuracy:.2f}%, ECE "
        f"{100 * (metrics.test_ece or 0):.2f}%, {wall:.0f}s)")  # fmt: skip
    return manifest, final


def fit_calibration(val: EvalResult, test: EvalResult, seed: int, *, held_out: bool) -> Calibration:
    """Fit the temperature on ``val``'s logits; record its effect on both splits."""
    temperature = fit_temperature(val.logits, val.labels)
    return Calibration(
        method="temperature",
        temperature=round(temperature, 6),
        validation_samples=len(val.labels),
        validation_seed=seed,
        held_out=held_out,
        test_uncalibrated=test.calibration.rounded(),
        validation=figures(val.logits / round(temperature, 6), val.labels).rounded(),
    )


def served_metrics(test: EvalResult, temperature: float, epochs: int) -> Metrics:
    """The manifest's test figures of the model as served: logits divided by ``temperature``."""
    served = figures(test.logits / temperature, test.labels)
    return Metrics(
        test_accuracy=round(served.accuracy, 6), test_loss=round(served.nll, 6),
        epochs=epochs, test_samples=len(test.labels), test_ece=round(served.ece, 6),
        test_brier=round(served.brier, 6),
        test_mean_confidence=round(served.mean_confidence, 6),
    )  # fmt: skip
