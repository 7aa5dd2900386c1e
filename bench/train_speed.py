"""Training speed: our in-memory loop vs the PyTorch tutorial's loop, same model and epochs.

The tutorial loop is the one in the PyTorch quickstart / MNIST examples: a torchvision
dataset decoding one PIL image per sample through ``ToTensor`` + ``Normalize`` (+ ``Resize``
for the 32x32 LeNets), a ``DataLoader`` with batch 64, and plain SGD at lr 1e-3, with a test
pass after each epoch. Ours is ``training.train.run`` with the shipped recipe. Both run in
this process, one after the other, on the same device, and the table gives the ratio.

    python bench/train_speed.py                      # every shipped model, 1 epoch each
    python bench/train_speed.py --epochs 2 mnist-lenet5
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader
from torchvision import transforms

from training.architectures import build_model, get_architecture
from training.datasets import default_data_dir, get_dataset, load_split
from training.device import resolve_device
from training.recipes import RECIPES
from training.train import TrainConfig, input_spec_for, run


def torchvision_dataset(name: str, root: Path, train: bool) -> torchvision.datasets.MNIST:
    """The real torchvision dataset class over the local IDX files (decompressed once)."""
    spec = get_dataset(name)
    raw = root / spec.torchvision_name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for gz in (default_data_dir() / spec.folder).glob("*.gz"):
        target = raw / gz.stem
        if not target.exists():
            with gzip.open(gz) as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst)
    cls = getattr(torchvision.datasets, spec.torchvision_name)
    return cls(str(root), train=train, download=False)  # type: ignore[no-any-return]


def tutorial_loop(name: str, epochs: int, device: torch.device, root: Path) -> tuple[float, float]:
    recipe = RECIPES[name]
    train_split = load_split(recipe["dataset"], train=True)
    spec = input_spec_for(recipe["arch"], train_split)
    steps = [transforms.ToTensor(), transforms.Normalize(spec.mean, spec.std)]
    if (spec.height, spec.width) != (28, 28):
        steps.insert(0, transforms.Resize((spec.height, spec.width)))
    tf = transforms.Compose(steps)
    train_ds = torchvision_dataset(recipe["dataset"], root, True)
    test_ds = torchvision_dataset(recipe["dataset"], root, False)
    train_ds.transform = test_ds.transform = tf
    train_dl = DataLoader(train_ds, batch_size=64, shuffle=True)
    test_dl = DataLoader(test_ds, batch_size=64)
    config = {**get_architecture(recipe["arch"]).config, **recipe.get("arch_config", {})}
    model = build_model(recipe["arch"], config).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    started = time.perf_counter()
    correct = 0
    for _ in range(epochs):
        model.train()
        for x, y in train_dl:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in test_dl:
                correct += int((model(x.to(device)).argmax(1) == y.to(device)).sum())
    return time.perf_counter() - started, correct / len(test_ds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", default=list(RECIPES))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = resolve_device(args.device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.names:
            cfg = TrainConfig(
                name=name, **{**RECIPES[name], "epochs": args.epochs},
                device=str(device), out_dir=Path(tmp) / "out",
            )  # fmt: skip
            t0 = time.perf_counter()
            manifest, _ = run(cfg, log=lambda *_: None)
            ours = time.perf_counter() - t0
            tut, tut_acc = tutorial_loop(name, args.epochs, device, Path(tmp) / "tv")
            rows.append((name, ours, manifest.metrics.test_accuracy, tut, tut_acc))
            print(f"{name}: ours {ours:.1f}s, tutorial {tut:.1f}s", flush=True)
    print(f"\ndevice {device}, {torch.get_num_threads()} torch threads, {args.epochs} epoch(s)")
    print("| model | ours (s) | ours acc | tutorial loop (s) | tutorial acc | speed-up |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, ours, acc, tut, tut_acc in rows:
        print(f"| {name} | {ours:.1f} | {100 * acc:.2f}% | {tut:.1f} | {100 * tut_acc:.2f}% "
              f"| {tut / ours:.1f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
