"""``mnist-train`` / ``python -m training``: train, retrain the shipped models, evaluate."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from training.architectures import ARCHITECTURES
from training.augment import AUGMENTS
from training.calibration import figures
from training.datasets import DATA_DIR_ENV, DATASETS, Split, load_split, validation_split
from training.device import resolve_device
from training.engine import evaluate
from training.export import RELIABILITY_NAME, plot_reliability, write_manifest
from training.loader import ModelLoadError, load_model
from training.recipes import RECIPES
from training.train import TrainConfig, fit_calibration, run, served_metrics

# Held out of a model trained on every training image, when it is calibrated afterwards.
DEFAULT_VAL_SIZE = 5000


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, default=None,
                   help=f"folder holding mnist/ and fashion-mnist/ IDX files "
                        f"(default: ${DATA_DIR_ENV}, else ../shared/datasets)")  # fmt: skip
    p.add_argument("--download", action="store_true",
                   help="fetch the data with torchvision's downloader into --data-dir")  # fmt: skip
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--optimizer", choices=["sgd", "adamw"])
    p.add_argument("--lr", type=float)
    p.add_argument("--momentum", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--schedule", choices=["none", "cosine", "onecycle", "step"])
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--augment", choices=sorted(AUGMENTS))
    p.add_argument("--val-size", type=int,
                   help="training images held out to fit the temperature (0: none)")  # fmt: skip
    p.add_argument("--ema-decay", type=float,
                   help="export an exponential moving average of the weights (0: off)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out-dir", type=Path, default=Path("models"), help="parent of the model folder"
    )
    p.add_argument("--limit-train", type=int, help="train on the first N images (smoke runs)")
    p.add_argument("--limit-test", type=int, help="evaluate on the first N test images")
    p.add_argument("--dry-run", action="store_true",
                   help="one epoch on 512 train / 256 test images: a smoke run")  # fmt: skip
    _data_args(p)


def _config(name: str, base: dict[str, object], args: argparse.Namespace) -> TrainConfig:
    fields = dict(base)
    for key in ("epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay",
                "schedule", "label_smoothing", "augment", "val_size", "ema_decay",
                "limit_train", "limit_test"):  # fmt: skip
        if getattr(args, key, None) is not None:
            fields[key] = getattr(args, key)
    if args.dry_run:
        fields.update(epochs=1, limit_train=512, limit_test=256)
        if fields.get("val_size"):
            fields["val_size"] = 128  # of the 512
    return TrainConfig(
        name=name, seed=args.seed, device=args.device, out_dir=args.out_dir,
        data_dir=args.data_dir, download=args.download, **fields,  # type: ignore[arg-type]
    )  # fmt: skip


def cmd_train(args: argparse.Namespace) -> int:
    name = args.name or f"{args.dataset}-{args.arch}".replace("_", "-")
    base = {"dataset": args.dataset, "arch": args.arch, "arch_config": args.arch_config}
    run(_config(name, base, args))
    return 0


def cmd_shipped(args: argparse.Namespace) -> int:
    for name in args.names or list(RECIPES):
        run(_config(name, RECIPES[name], args))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    loaded = load_model(args.folder, resolve_device(args.device))
    manifest = loaded.manifest
    test = load_split(manifest.dataset, False, args.data_dir, args.download)
    if args.limit:
        test = test.subset(args.limit)
    test = type(test)(test.images.to(loaded.device), test.labels.to(loaded.device))
    result = evaluate(loaded.model, test, loaded.preprocessor)
    served = result.calibration
    temperature = manifest.calibration.temperature
    # The loaded model divides by the temperature; multiplying back gives the raw logits.
    raw = figures(result.logits * temperature, result.labels)
    report = {
        "model": manifest.name,
        "dataset": manifest.dataset,
        "samples": len(test),
        "accuracy": round(result.accuracy, 6),
        "loss": round(result.loss, 6),
        "ece": round(served.ece, 6),
        "nll": round(served.nll, 6),
        "brier": round(served.brier, 6),
        "mean_confidence": round(served.mean_confidence, 6),
        "temperature": temperature,
        "uncalibrated": raw.rounded(),
        "per_class_accuracy": {
            c: round(a, 4)
            for c, a in zip(manifest.classes, result.per_class_accuracy(), strict=True)
        },
        "confusion_matrix": result.confusion.tolist(),
        "manifest_accuracy": manifest.metrics.test_accuracy,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{manifest.name} on {manifest.dataset} test ({len(test):,} images): "
          f"accuracy {100 * result.accuracy:.2f}%  loss {result.loss:.4f}  "
          f"(manifest: {100 * manifest.metrics.test_accuracy:.2f}%)")  # fmt: skip
    print(f"  temperature {temperature:.4f}: ECE {100 * served.ece:.2f}%  NLL {served.nll:.4f}  "
          f"Brier {served.brier:.4f}  mean confidence {served.mean_confidence:.4f}")  # fmt: skip
    if temperature != 1.0:
        print(f"  as trained (T=1):   ECE {100 * raw.ece:.2f}%  NLL {raw.nll:.4f}  "
              f"Brier {raw.brier:.4f}  mean confidence {raw.mean_confidence:.4f}")  # fmt: skip
    width = max(len(c) for c in manifest.classes)
    for cls, acc in report["per_class_accuracy"].items():  # type: ignore[attr-defined]
        print(f"  {cls:>{width}}  {100 * acc:6.2f}%")
    print("confusion matrix (rows: true, columns: predicted):")
    for row in result.confusion.tolist():
        print("  " + " ".join(f"{v:5d}" for v in row))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    folder: Path = args.folder
    loaded = load_model(folder, resolve_device(args.device), calibrated=False)
    manifest = loaded.manifest
    recorded = int(manifest.training.get("val_size") or 0)
    size = args.val_size or recorded or DEFAULT_VAL_SIZE
    seed = int(manifest.training.get("seed", 0))
    train = load_split(manifest.dataset, True, args.data_dir, args.download)
    if manifest.training.get("limit_train"):
        train = train.subset(int(manifest.training["limit_train"]))
    _, val = validation_split(train, size, seed)
    test = load_split(manifest.dataset, False, args.data_dir, args.download)
    dev = loaded.device
    val_result = evaluate(loaded.model, Split(val.images.to(dev), val.labels.to(dev)),
                          loaded.preprocessor)  # fmt: skip
    result = evaluate(loaded.model, Split(test.images.to(dev), test.labels.to(dev)),
                      loaded.preprocessor)  # fmt: skip
    # The same seed and length draw the same order: a smaller split lies inside the held-out one.
    held_out = size <= recorded
    calibration = fit_calibration(val_result, result, seed, held_out=held_out)
    metrics = served_metrics(result, calibration.temperature, manifest.metrics.epochs)
    write_manifest(folder, manifest.model_copy(
        update={"metrics": metrics, "calibration": calibration}))  # fmt: skip
    plot_reliability(result.logits, result.labels, calibration.temperature,
                     folder / RELIABILITY_NAME, manifest.name)  # fmt: skip
    before = calibration.test_uncalibrated
    where = "held out of training" if held_out else "not held out: the model trained on them"
    print(f"{manifest.name}: temperature {calibration.temperature:.4f} fitted on {size:,} "
          f"validation images (seed {seed}; {where})")  # fmt: skip
    print(f"  test ({len(test):,} images): ECE {100 * before['ece']:.2f}% -> "
          f"{100 * (metrics.test_ece or 0):.2f}%, NLL {before['nll']:.4f} -> "
          f"{metrics.test_loss:.4f}, Brier {before['brier']:.4f} -> {metrics.test_brier:.4f}, "
          f"accuracy {100 * metrics.test_accuracy:.2f}%")  # fmt: skip
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mnist-train", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one model and export its folder")
    p.add_argument("--dataset", choices=sorted(DATASETS), required=True)
    p.add_argument("--arch", choices=sorted(ARCHITECTURES), required=True)
    p.add_argument("--name", help="model folder name (default: <dataset>-<arch>)")
    p.add_argument("--arch-config", type=json.loads, default={},
                   help="JSON over the architecture's defaults, e.g. "
                        "'{\"channels\": [16, 32]}'")  # fmt: skip
    _train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("shipped", help="retrain the shipped models from their recipes")
    p.add_argument("names", nargs="*", choices=[*RECIPES, []], metavar="NAME",
                   help=f"default: all of {', '.join(RECIPES)}")  # fmt: skip
    _train_args(p)
    p.set_defaults(func=cmd_shipped)

    p = sub.add_parser("evaluate", help="accuracy, ECE, NLL, Brier score, per-class accuracy "
                       "and confusion matrix")  # fmt: skip
    p.add_argument("folder", type=Path)
    p.add_argument("--limit", type=int, help="only the first N test images")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _data_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("calibrate", help="fit the temperature on the validation split, "
                       "rewrite model.json and reliability.png")  # fmt: skip
    p.add_argument("folder", type=Path)
    p.add_argument("--val-size", type=int,
                   help="validation images (default: the val_size the model was trained with, "
                        f"else {DEFAULT_VAL_SIZE:,})")  # fmt: skip
    _data_args(p)
    p.set_defaults(func=cmd_calibrate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ModelLoadError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
