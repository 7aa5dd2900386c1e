"""MNIST and Fashion-MNIST as in-memory uint8 tensors, read from the original IDX files.

Training holds each split as one ``(N, 1, 28, 28)`` uint8 tensor instead of decoding samples
one by one, which is what makes an epoch on two CPU cores take seconds rather than minutes.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DATA_DIR_ENV = "MNIST_SERVE_DATA_DIR"
# The checkout sits beside shared/, which holds the original files (see its README).
_DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    folder: str  # sub-folder of the data dir holding the four IDX files
    classes: tuple[str, ...]
    torchvision_name: str  # the torchvision.datasets class, for --download


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec("mnist", "mnist", tuple(str(d) for d in range(10)), "MNIST"),
    "fashion-mnist": DatasetSpec(
        "fashion-mnist",
        "fashion-mnist",
        (
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        ),
        "FashionMNIST",
    ),
}  # fmt: skip


@dataclass(frozen=True)
class Split:
    """One split: images ``(N, 1, 28, 28)`` uint8 and labels ``(N,)`` int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, n: int) -> Split:
        return Split(self.images[:n], self.labels[:n])


class DatasetNotFoundError(FileNotFoundError):
    pass


def default_data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV, _DEFAULT_DATA_DIR))


def get_dataset(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})") from None


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): the format of the original MNIST files."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def _find(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.exists():
            return candidate
    raise DatasetNotFoundError(
        f"{folder / stem}[.gz] not found: set --data-dir or ${DATA_DIR_ENV} to the folder "
        "holding mnist/ and fashion-mnist/, or pass --download"
    )


def load_split(
    name: str, train: bool, data_dir: Path | None = None, download: bool = False
) -> Split:
    """Load a split of ``name`` ('mnist' or 'fashion-mnist') as tensors.

    Reads ``<data_dir>/<name>/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``; with
    ``download=True`` torchvision fetches the same files into ``data_dir`` instead.
    """
    spec = get_dataset(name)
    root = data_dir or default_data_dir()
    if download:
        import torchvision.datasets as tvd

        ds = getattr(tvd, spec.torchvision_name)(str(root), train=train, download=True)
        return Split(ds.data.unsqueeze(1).contiguous(), ds.targets.long())
    prefix = "train" if train else "t10k"
    folder = root / spec.folder
    images = read_idx(_find(folder, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(folder, f"{prefix}-labels-idx1-ubyte"))
    return Split(
        torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))
    )


def channel_stats(images: torch.Tensor) -> tuple[float, float]:
    """Mean and std of uint8 images scaled to [0, 1]: the normalization the model is fed."""
    x = images.double() / 255.0
    return float(x.mean()), float(x.std())


def validation_split(train: Split, size: int, seed: int = 0) -> tuple[Split, Split]:
    """``(train minus validation, validation)``: ``size`` training images, drawn by ``seed``.

    The validation images are held out of training and used to fit the temperature
    (training/calibration.py); the test split stays untouched for the final figures. The
    draw depends only on ``seed`` and the split's length, so ``calibrate`` redraws it.
    """
    if not 0 < size < len(train):
        raise ValueError(f"validation size {size} must be between 1 and {len(train) - 1}")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    keep, held = order[size:].sort().values, order[:size].sort().values
    return (
        Split(train.images[keep], train.labels[keep]),
        Split(train.images[held], train.labels[held]),
    )
