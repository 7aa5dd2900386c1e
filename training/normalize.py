"""Real-world uploads -> dataset-shaped images: the first step of the one preprocessing path.

MNIST and Fashion-MNIST images are light objects on a black 28x28 canvas, made by a known
recipe. A user's upload (a phone photo of a digit on paper, a scan, black ink on white,
4000x3000 JPEG) is not; resizing it to the model's input gives the network something it has
never seen. :func:`normalize` re-creates the dataset's own recipe on an 8-bit grayscale image:

* lighting: subtract the background, fitted as a smooth (quadratic) surface when the border
  is uneven (a constant otherwise);
* polarity: when the object is darker than the background, invert; then stretch the
  contrast so the background's noise is black and the object's ink full white;
* ``fit="digit"`` (MNIST's recipe): crop to the ink's bounding box, ignoring faint noise
  and specks; scale the longer side to 20 px keeping the aspect ratio; paste into 28x28 so
  the centre of mass lands in the centre;
* ``fit="object"`` (Fashion-MNIST's recipe): crop to the object's bounding box, scale the
  longer side to 28 px, centre the box in 28x28, background at zero.

The model's own transform (resize to its input size, normalize) then runs unchanged. Which
recipe a model uses is recorded in its manifest (``input.fit``); ``"none"`` (the default of
older manifests) turns normalization off.

Modes, chosen per request:

* ``auto``: an image that already looks dataset-shaped (28x28 with a dark background) passes
  through unchanged, bit for bit; every other image gets the recipe;
* ``dataset``: the recipe always runs, even on 28x28 dark-background images;
* ``none``: no normalization: the image goes to the model's transform as decoded.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageFilter

Fit = Literal["digit", "object", "none"]
Mode = Literal["auto", "dataset", "none"]
MODES: tuple[Mode, ...] = ("auto", "dataset", "none")

CANVAS = 28  # the side of an MNIST / Fashion-MNIST image
WORK_SIDE = 512  # larger uploads are box-filtered down to this before anything else


@dataclass(frozen=True)
class Recipe:
    box: int  # the longer side of the object inside the canvas
    centre: Literal["mass", "box"]  # what is placed at the canvas centre
    # This percentile of the object's pixels becomes full white; None keeps the shading's
    # own level (Fashion-MNIST kept the photos' intensities).
    ink_percentile: float | None
    mask_level: int  # after the stretch, pixels above this belong to the object's box
    # Fit uneven lighting as a surface? Only where the object leaves the border to the
    # background (digits); clothes may fill the frame, so their background is one level.
    flatten: bool


RECIPES: dict[str, Recipe] = {
    # LeCun et al.: "normalized to fit in a 20x20 pixel box while preserving their aspect
    # ratio ... centered in a 28x28 image by computing the center of mass of the pixels".
    "digit": Recipe(box=20, centre="mass", ink_percentile=90.0, mask_level=64, flatten=True),
    # Xiao et al.: trim, resize the longest edge to 28, extend the shortest edge to 28 and
    # put the object in the centre; intensities keep their shading (max -> white).
    "object": Recipe(box=CANVAS, centre="box", ink_percentile=None, mask_level=16, flatten=False),
}

# The recipe each dataset was made with; training records it in the manifest's input.fit.
FIT_FOR_DATASET: dict[str, Fit] = {"mnist": "digit", "fashion-mnist": "object"}


def looks_dataset_shaped(gray: np.ndarray) -> bool:
    """28x28 and the background (the border) is darker than the object.

    The test is :func:`_light_background` on the image minus its border's median. It runs
    on every upload in ``auto`` mode, so on uint8 images it is computed without numpy's
    median (about 15 us a call): the border's median and spread are half-integers, read
    exactly from the sorted integers, and the rest is the same float32 arithmetic, so the
    answer is identical (tests/training/test_preprocess.py checks both datasets against the plain
    formula). When the border is one level (MNIST's black frame: 99% of its test set) the
    spread is 0, the sums are of integers and exact, and the test reduces to comparing
    the image's sum with that level times its size.
    """
    if gray.shape != (CANVAS, CANVAS):
        return False
    if gray.dtype != np.uint8:
        return _looks_dataset_shaped_plain(gray)
    ring = gray.reshape(-1)[_RING]  # == _border(gray), in one numpy call
    low, high = int(ring.min()), int(ring.max())
    if low == high:  # r = gray - low; the object outweighs the background iff sum(r) >= 0
        return int(gray.sum(dtype=np.int64)) >= gray.size * low
    level2 = _twice_median(np.sort(ring.astype(np.int32)))  # 2 * median(border)
    deviation2 = np.sort(np.abs(2 * ring.astype(np.int32) - level2))  # 2 * |border - median|
    sigma = 1.4826 * (_twice_median(deviation2) / 4)
    r = gray.astype(np.float32) - level2 / 2
    above = np.clip(r - 3 * sigma, 0, None).sum()
    below = np.clip(-r - 3 * sigma, 0, None).sum()
    return not bool(below > above)


def dataset_shaped_each(grays: np.ndarray) -> np.ndarray:
    """:func:`looks_dataset_shaped` of each image of an ``(n, 28, 28)`` uint8 stack -> ``n``
    booleans.

    The images whose border is one level (the common case) are decided together, by the
    same integer comparison as the one-image check, in three numpy calls for the whole
    stack; the others go through :func:`looks_dataset_shaped` one by one: ~2 us per image
    of a 64-file upload instead of ~12.
    """
    flat = grays.reshape(len(grays), -1)
    ring = flat[:, _RING]
    low, high = ring.min(axis=1), ring.max(axis=1)
    answers: np.ndarray = flat.sum(axis=1, dtype=np.int64) >= flat.shape[1] * low.astype(np.int64)
    for i in np.flatnonzero(low != high):
        answers[i] = looks_dataset_shaped(grays[i])
    return answers


def _looks_dataset_shaped_plain(gray: np.ndarray) -> bool:
    """The definition :func:`looks_dataset_shaped` computes faster on uint8 images."""
    a = gray.astype(np.float32)
    return not _light_background(a - float(np.median(_border(a))))


def _twice_median(ordered: np.ndarray) -> int:
    """Twice the median of sorted integers (an integer: no rounding)."""
    n = len(ordered)
    return int(ordered[n // 2]) * 2 if n % 2 else int(ordered[n // 2 - 1]) + int(ordered[n // 2])


def normalize(gray: np.ndarray, fit: Fit, mode: Mode = "auto") -> np.ndarray:
    """An ``(H, W)`` uint8 grayscale image -> the image the model's transform should see.

    Returns ``gray`` itself when nothing is to be done (``fit="none"``, ``mode="none"``,
    or ``mode="auto"`` on an image that already looks dataset-shaped), else a new 28x28
    uint8 array built by the model's recipe.
    """
    if fit == "none" or mode == "none" or gray.size == 0:
        return gray
    if mode == "auto" and looks_dataset_shaped(gray):
        return gray
    recipe = RECIPES[fit]
    a = _shrink(gray).astype(np.float32)
    a = a - _background(a, recipe.flatten)
    if _light_background(a):
        a = -a
    a = _stretch(a, recipe)
    mask = _object_mask(a, recipe.mask_level)
    if not mask.any():
        return np.zeros((CANVAS, CANVAS), np.uint8)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    crop = a[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    return _place(_fit_box(crop, recipe.box), recipe.centre)


# normalize_all holds at most this many consecutive 28x28 images to check them together;
# below _BATCHED_FROM the batched check's fixed cost (~10 us) is more than it saves.
_RUN = 256
_BATCHED_FROM = 4


def normalize_all(
    grays: Iterable[np.ndarray], fit: Fit, mode: Mode = "auto"
) -> Iterator[np.ndarray]:
    """:func:`normalize` of each image, in order, as they are consumed: the same arrays.

    In ``auto`` mode, consecutive 28x28 uint8 images (up to 256) are held and checked
    together (:func:`dataset_shaped_each`); the recipe runs on the ones that fail, and
    any other image is normalized as it comes, so a large upload is never held.
    """
    if fit == "none" or mode != "auto":
        yield from (normalize(gray, fit, mode) for gray in grays)
        return
    run: list[np.ndarray] = []

    def checked() -> Iterator[np.ndarray]:
        if len(run) < _BATCHED_FROM:
            yield from (normalize(gray, fit, mode) for gray in run)
        else:
            answers = dataset_shaped_each(np.stack(run)).tolist()
            for gray, shaped in zip(run, answers, strict=True):
                yield gray if shaped else normalize(gray, fit, "dataset")
        run.clear()

    for gray in grays:
        if gray.shape == (CANVAS, CANVAS) and gray.dtype == np.uint8:
            run.append(gray)
            if len(run) == _RUN:
                yield from checked()
            continue
        if run:
            yield from checked()
        yield normalize(gray, fit, mode)
    if run:
        yield from checked()


def _shrink(gray: np.ndarray) -> np.ndarray:
    h, w = gray.shape
    scale = WORK_SIDE / max(h, w)
    if scale >= 1:
        return gray
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(gray).resize(size, Image.Resampling.BOX))


def _border(a: np.ndarray) -> np.ndarray:
    """The outer ring of the image, about 5% of the shorter side wide (at least 1 px)."""
    k = max(1, min(a.shape) // 20)
    return np.concatenate([a[:k].ravel(), a[-k:].ravel(), a[:, :k].ravel(), a[:, -k:].ravel()])


# The flat indices of _border on a 28x28 image (corners twice, as _border has them): the
# "dataset-shaped?" check runs on every upload, and one fancy index costs 1.5 us against
# _border's 2.9.
_RING = _border(np.arange(CANVAS * CANVAS).reshape(CANVAS, CANVAS))


def _light_background(r: np.ndarray) -> bool:
    """Is the object darker than the background? ``r`` is the image minus its background:
    the object is the side with more mass beyond the background's noise (3 robust sigmas,
    read on the border), however few pixels it covers."""
    border = _border(r)
    sigma = 1.4826 * float(np.median(np.abs(border - np.median(border))))
    above = np.clip(r - 3 * sigma, 0, None).sum()
    below = np.clip(-r - 3 * sigma, 0, None).sum()
    return bool(below > above)


def _otsu(values: np.ndarray) -> float:
    hist, edges = np.histogram(values, bins=256, range=(0.0, 256.0))
    p = hist.astype(np.float64) / max(1, hist.sum())
    omega, mu = np.cumsum(p), np.cumsum(p * np.arange(256))
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * omega - mu) ** 2 / (omega * (1 - omega))
    return float(edges[int(np.nanargmax(between)) + 1]) if np.isfinite(between).any() else 0.0


def _background(a: np.ndarray, flatten: bool) -> np.ndarray | float:
    """The background level: a constant (the border's median) when the border is even or
    ``flatten`` is off, else a quadratic surface fitted robustly: refitted while dropping
    pixels far from the fit (the object, dark or light)."""
    border = _border(a)
    low, high = np.percentile(border, [5, 95])
    if not flatten or high - low < 24:
        return float(np.median(border))
    h, w = a.shape
    step = max(1, max(h, w) // 64)  # fit on a sparse grid: ~4k points at most
    ys, xs = np.mgrid[0:h:step, 0:w:step]
    y, x = ys.ravel() / h - 0.5, xs.ravel() / w - 0.5
    design = np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], 1)
    values = a[::step, ::step].ravel()
    keep = np.ones(values.shape, bool)
    for _ in range(4):
        d = design[keep]
        coef = np.linalg.lstsq(d.T @ d, d.T @ values[keep], rcond=None)[0]  # 6x6 normal eqs.
        residual = values - design @ coef
        centre = float(np.median(residual[keep]))
        sigma = 1.4826 * float(np.median(np.abs(residual[keep] - centre)))
        keep = np.abs(residual - centre) <= 2.5 * max(sigma, 1.0)
        if keep.sum() < 6:
            return float(np.median(border))
    c = coef.astype(np.float32)
    y2 = (np.arange(h, dtype=np.float32) / h - 0.5)[:, None]
    x2 = (np.arange(w, dtype=np.float32) / w - 0.5)[None, :]
    full: np.ndarray = (
        c[0] + c[1] * x2 + c[2] * y2 + c[3] * x2 * x2 + c[4] * x2 * y2 + c[5] * y2 * y2
    )
    return full


def _stretch(a: np.ndarray, recipe: Recipe) -> np.ndarray:
    """Map the background's noise floor (read on the border) to 0 and the object's ink
    level to 255."""
    a = np.clip(a, 0.0, 255.0)
    border = _border(a)
    level = float(np.median(border))
    noise = 1.4826 * float(np.median(np.abs(border - level)))  # robust sigma of the border
    # Otsu splits ink from paper when there is enough ink; on a photo with a small digit it
    # may split the paper's noise instead, so the ink must also stand well clear of it.
    threshold = max(_otsu(a), level + 6 * noise + 16)
    ink = a[a > threshold]
    if ink.size == 0:
        return np.zeros_like(a)
    floor = min(level + 3 * noise, threshold / 2)
    top = (
        255.0 if recipe.ink_percentile is None else float(np.percentile(ink, recipe.ink_percentile))
    )
    if top <= floor:
        return np.zeros_like(a)
    return np.clip((a - floor) * (255.0 / (top - floor)), 0.0, 255.0)


def _object_mask(a: np.ndarray, level: int) -> np.ndarray:
    """Pixels of the object: above ``level``, after a 3x3 median filter on images large
    enough that strokes are wider than a pixel, which drops isolated specks of noise."""
    img = Image.fromarray(np.rint(a).astype(np.uint8))
    if min(a.shape) >= 3 * CANVAS:
        img = img.filter(ImageFilter.MedianFilter(3))
    return np.asarray(img) > level


def _fit_box(crop: np.ndarray, box: int) -> np.ndarray:
    """Scale ``crop`` so its longer side is ``box`` px, keeping the aspect ratio."""
    h, w = crop.shape
    scale = box / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    image = Image.fromarray(crop.astype(np.float32), mode="F")
    resized = np.asarray(image.resize(size, Image.Resampling.LANCZOS))
    return np.clip(resized, 0.0, 255.0)  # type: ignore[no-any-return]


def _place(obj: np.ndarray, centre: Literal["mass", "box"]) -> np.ndarray:
    """Paste ``obj`` into a black 28x28 canvas with its centre of mass (or its box centre)
    at the canvas centre; whatever falls outside is cut off, as in MNIST."""
    h, w = obj.shape
    if centre == "mass" and obj.sum() > 0:
        ys, xs = np.indices(obj.shape)
        cy, cx = (ys * obj).sum() / obj.sum(), (xs * obj).sum() / obj.sum()
    else:
        cy, cx = (h - 1) / 2, (w - 1) / 2
    top, left = round((CANVAS - 1) / 2 - cy), round((CANVAS - 1) / 2 - cx)
    canvas = np.zeros((CANVAS, CANVAS), np.float32)
    y0, x0 = max(0, top), max(0, left)
    y1, x1 = min(CANVAS, top + h), min(CANVAS, left + w)
    if y1 > y0 and x1 > x0:
        canvas[y0:y1, x0:x1] = obj[y0 - top : y1 - top, x0 - left : x1 - left]
    return np.rint(canvas).astype(np.uint8)
