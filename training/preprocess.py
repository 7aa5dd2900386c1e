"""The one image -> tensor path, built from a model's metadata.

Training feeds its in-memory uint8 dataset tensors through :attr:`Preprocessor.transform`;
the service turns each decoded upload into the same kind of uint8 array
(:meth:`Preprocessor.to_arrays`: grayscale, then the upload normalization) and calls the
very same transform on them, once per group of equal-sized images
(:meth:`Preprocessor.from_arrays`; :meth:`Preprocessor.from_images` and
:meth:`Preprocessor.from_image` are the two halves in one call). No mean, std or input
size is written anywhere else: they come from the model's :class:`InputSpec`.
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


# from_images holds back at most this many pixels of small images to transform them in
# groups (28x28: 1,337 images); an image this large is transformed alone, at once (the
# float copy of a batch costs 4 bytes a pixel).
TRANSFORM_CHUNK_PIXELS = 1 << 20

_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N"}


def _scale_to_uint8(arr: np.ndarray, full_scale: float) -> np.ndarray:
    return np.clip(np.rint(arr.astype(np.float64) * (255.0 / full_scale)), 0, 255).astype(np.uint8)


# A decoded image: a Pillow image of any mode, or the ``(H, W)`` uint8 pixels of an upright
# 8-bit grayscale one (the same as ``np.asarray(image)`` of an "L" image; what the
# service's fast PNG decoder returns, app/imaging.py).
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


def _gray_pixels(image: Decoded) -> np.ndarray:
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

    def from_image(self, image: Decoded, mode: Mode = "auto") -> torch.Tensor:
        """A decoded image of any size and mode -> one ``(1, height, width)`` model input.

        ``mode`` picks the upload normalization (see :mod:`training.normalize`): ``auto``
        passes dataset-shaped images through unchanged and normalizes the rest, ``dataset``
        always normalizes, ``none`` never does. The same path as :meth:`from_images`.
        """
        return self.from_images([image], mode)[0]

    def to_array(self, image: Decoded, mode: Mode = "auto") -> np.ndarray:
        """The per-image half of the path: grayscale, then the upload normalization ->
        an ``(H, W)`` uint8 array for :attr:`transform`. An array is taken as the
        pixels of an upright 8-bit grayscale image (see :data:`Decoded`). The same path
        as :meth:`to_arrays`."""
        return next(self.to_arrays([image], mode))

    def to_arrays(self, images: Iterable[Decoded], mode: Mode = "auto") -> Iterator[np.ndarray]:
        """:meth:`to_array` of each image, in order, as they are consumed; the
        normalization's "dataset-shaped?" check runs on runs of 28x28 images together
        (:func:`training.normalize.normalize_all`), with the same answers."""
        return normalize_all((_gray_pixels(image) for image in images), self.spec.fit, mode)

    def from_images(self, images: Iterable[Decoded], mode: Mode = "auto") -> torch.Tensor:
        """Decoded images of any sizes and modes -> one ``(n, 1, height, width)`` batch.

        Per image only what must be (:meth:`to_arrays`); then :meth:`from_arrays` stacks
        images of equal size and runs :attr:`transform` once per group. The transform
        computes every image of a batch independently, so the result equals the
        image-by-image one, bit for bit (tests/test_preprocess.py).

        ``images`` may be a generator: each image is then reduced to its array as it is
        consumed, so a decoding error surfaces in order and a decoded image is dropped at
        once (only 28x28 ones are held, briefly, for the batched check).
        """
        return self.from_arrays(self.to_arrays(images, mode))

    def from_arrays(self, arrays: Iterable[np.ndarray]) -> torch.Tensor:
        """``(H, W)`` uint8 arrays of any sizes (from :meth:`to_array`) -> the
        ``(n, 1, height, width)`` batch, in order: equal-sized arrays are stacked and
        transformed together.

        At most :data:`TRANSFORM_CHUNK_PIXELS` pixels are held back for grouping; a larger
        array is transformed at once, alone, so 64 large uploads never become one huge
        float tensor.
        """
        done: list[tuple[list[int], torch.Tensor]] = []
        pending: dict[tuple[int, ...], list[tuple[int, np.ndarray]]] = {}
        held = 0

        def flush() -> None:
            for group in pending.values():
                stacked = torch.from_numpy(np.stack([arr for _, arr in group]))  # a copy
                done.append(([i for i, _ in group], self.transform(stacked.unsqueeze(1))))
            pending.clear()

        n = 0
        for n, arr in enumerate(arrays, 1):
            if arr.size >= TRANSFORM_CHUNK_PIXELS:
                done.append(([n - 1], self.transform(image_to_uint8(arr).unsqueeze(0))))
                continue
            pending.setdefault(arr.shape, []).append((n - 1, arr))
            held += arr.size
            if held >= TRANSFORM_CHUNK_PIXELS:
                flush()
                held = 0
        flush()
        if len(done) == 1:
            return done[0][1]  # one group, in order
        spec = self.spec
        out = torch.empty((n, spec.channels, spec.height, spec.width))
        for indices, result in done:
            out[indices] = result
        return out
