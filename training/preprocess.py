"""The one image -> tensor path, built from a model's metadata.

Training feeds its uint8 dataset tensors through :attr:`Preprocessor.transform`. Serving
turns each upload into the same kind of uint8 array (grayscale, then :meth:`Preprocessor.fit`,
the upload normalization) and calls the very same transform on them
(:meth:`Preprocessor.from_arrays`). No mean, std or input size is written anywhere else: they
come from the model's :class:`InputSpec`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps
from pydantic import BaseModel, Field
from torchvision.transforms import v2

from training.normalize import Fit, Mode, normalize_all


class InputSpec(BaseModel):
    """What the network expects: size, channels and the normalization it was trained with."""

    height: int = Field(gt=0, le=1024)
    width: int = Field(gt=0, le=1024)
    channels: Literal[1] = 1
    mean: list[float] = Field(min_length=1, max_length=1)
    std: list[float] = Field(min_length=1, max_length=1)
    # How uploads are made dataset-shaped before the transform (training/normalize.py):
    # "digit" (MNIST's recipe), "object" (Fashion-MNIST's) or "none" (older manifests).
    fit: Fit = "none"


_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N"}


def _scale_to_uint8(arr: np.ndarray, full_scale: float) -> np.ndarray:
    return np.clip(np.rint(arr.astype(np.float64) * (255.0 / full_scale)), 0, 255).astype(np.uint8)


# An image as the path takes it: a Pillow image of any mode, or the ``(H, W)`` uint8 pixels
# of an upright 8-bit grayscale one (what ``gray_pixels`` returns).
Decoded = Image.Image | np.ndarray


def to_grayscale(image: Image.Image) -> Image.Image:
    """Any decoded image -> an upright 8-bit grayscale ('L') image.

    EXIF orientation is applied; 16- and 32-bit images are scaled to 8 bits, not clipped;
    transparency is flattened onto the background that contrasts with the ink, so a dark
    stroke drawn on a transparent canvas reads as ink on paper and a light one as ink on
    a dark board.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode == "La":  # premultiplied alpha (TIFF): Pillow converts it only to LA
        image = image.convert("LA")
    mode = image.mode
    if mode in _SIXTEEN_BIT or mode in ("I", "F"):
        # Non-finite float pixels (NaN, inf in a float TIFF) count as background.
        arr = np.nan_to_num(np.asarray(image), nan=0.0, posinf=0.0, neginf=0.0)
        peak = float(arr.max()) if arr.size else 0.0
        if mode == "F":
            full = 1.0 if peak <= 1.0 else max(peak, 255.0)
        else:
            full = 65535.0 if mode in _SIXTEEN_BIT or peak > 255 else 255.0
            full = max(full, peak)
        return Image.fromarray(_scale_to_uint8(arr, full), mode="L")
    has_alpha = mode in ("LA", "La", "RGBA", "RGBa", "PA") or "transparency" in image.info
    if has_alpha:
        la = np.asarray(image.convert("RGBA").convert("LA"), dtype=np.float64)
        lum, alpha = la[..., 0], la[..., 1] / 255.0
        weight = alpha.sum()
        ink = (lum * alpha).sum() / weight if weight > 0 else 0.0
        background = 255.0 if ink < 128 else 0.0
        flat = lum * alpha + background * (1.0 - alpha)
        return Image.fromarray(np.rint(flat).astype(np.uint8), mode="L")
    if mode == "L":
        return image
    if mode not in ("RGB", "1", "P"):
        image = image.convert("RGB")  # CMYK, YCbCr, LAB, HSV ...
    return image.convert("L")


def image_to_uint8(image: Image.Image | np.ndarray) -> torch.Tensor:
    """An 'L' image (or ``(H, W)`` uint8 array) -> a ``(1, H, W)`` uint8 tensor, the layout
    of the dataset tensors."""
    return torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).unsqueeze(0)


def gray_pixels(image: Decoded) -> np.ndarray:
    """A decoded image -> its upright 8-bit grayscale ``(H, W)`` uint8 pixels."""
    if isinstance(image, np.ndarray):
        if image.ndim != 2 or image.dtype != np.uint8:
            raise ValueError(f"expected (H, W) uint8 grayscale pixels, got {image.dtype}")
        return image
    return np.asarray(to_grayscale(image), dtype=np.uint8)


class Preprocessor:
    """Built once per model from its :class:`InputSpec`."""

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        # Works on uint8 ``(..., 1, H, W)`` batches or single images alike; float input in
        # [0, 1] (augmented training batches) passes ToDtype unchanged.
        self.transform = v2.Compose(
            [
                v2.ToDtype(torch.float32, scale=True),
                v2.Resize((spec.height, spec.width), antialias=True),
                v2.Normalize(mean=spec.mean, std=spec.std),
            ]
        )

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, 1, H, W)`` (or float in [0, 1]) -> the model's input batch."""
        return self.transform(images)  # type: ignore[no-any-return]

    def fit(self, grays: Iterable[np.ndarray], mode: Mode = "auto") -> Iterator[np.ndarray]:
        """The upload normalization of each ``(H, W)`` uint8 image, in order, as they are
        consumed (:func:`training.normalize.normalize_all` with the model's recipe)."""
        return normalize_all(grays, self.spec.fit, mode)

    def from_arrays(self, arrays: Iterable[np.ndarray]) -> torch.Tensor:
        """``(H, W)`` uint8 arrays of any sizes -> the ``(n, 1, height, width)`` batch, in
        order. Equal-sized arrays are stacked and transformed together; the transform
        computes every image of a batch independently, so the result equals the
        image-by-image one bit for bit (tests/training/test_preprocess.py)."""
        groups: dict[tuple[int, ...], list[int]] = {}
        items = list(arrays)
        for i, arr in enumerate(items):
            groups.setdefault(arr.shape, []).append(i)
        if len(groups) == 1:
            return self.transform(torch.from_numpy(np.stack(items)).unsqueeze(1))  # type: ignore[no-any-return]
        spec = self.spec
        out = torch.empty((len(items), spec.channels, spec.height, spec.width))
        for indices in groups.values():
            stacked = torch.from_numpy(np.stack([items[i] for i in indices])).unsqueeze(1)
            out[indices] = self.transform(stacked)
        return out

    def from_images(self, images: Iterable[Decoded], mode: Mode = "auto") -> torch.Tensor:
        """Images of any sizes and modes -> one ``(n, 1, height, width)`` batch: grayscale,
        :meth:`fit`, :meth:`from_arrays`."""
        return self.from_arrays(self.fit((gray_pixels(image) for image in images), mode))

    def from_image(self, image: Decoded, mode: Mode = "auto") -> torch.Tensor:
        """One image of any size and mode -> one ``(1, height, width)`` model input.

        ``mode`` picks the upload normalization (see :mod:`training.normalize`): ``auto``
        passes dataset-shaped images through unchanged and normalizes the rest, ``dataset``
        always normalizes, ``none`` never does.
        """
        return self.from_images([image], mode)[0]

    def to_array(self, image: Decoded, mode: Mode = "auto") -> np.ndarray:
        """One image -> the ``(H, W)`` uint8 array the transform gets (grayscale, fitted)."""
        return next(self.fit([gray_pixels(image)], mode))
