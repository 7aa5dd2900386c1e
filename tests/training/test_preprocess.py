import numpy as np
import pytest
import torch
from PIL import Image

from training.normalize import normalize, normalize_all
from training.preprocess import InputSpec, Preprocessor, image_to_uint8, to_grayscale

SPEC32 = InputSpec(height=32, width=32, mean=[0.1307], std=[0.3081])
SPEC28 = InputSpec(height=28, width=28, mean=[0.2860], std=[0.3530])


def test_batch_and_single_image_give_identical_inputs(mnist_test) -> None:
    pre = Preprocessor(SPEC32)
    batch = pre(mnist_test.images[:16])
    singles = torch.stack([pre(mnist_test.images[i]) for i in range(16)])
    assert batch.shape == (16, 1, 32, 32)
    assert torch.equal(batch, singles)


def test_serving_path_matches_training_path_bit_for_bit(mnist_test) -> None:
    pre = Preprocessor(SPEC32)
    for i in range(8):
        image = Image.fromarray(mnist_test.images[i, 0].numpy())
        assert torch.equal(pre.from_image(image), pre(mnist_test.images[i]))


def test_normalization_uses_the_spec_mean_and_std() -> None:
    pre = Preprocessor(SPEC28)
    x = torch.full((1, 1, 28, 28), 255, dtype=torch.uint8)
    expected = (1.0 - SPEC28.mean[0]) / SPEC28.std[0]
    assert torch.allclose(pre(x), torch.full((1, 1, 28, 28), expected))


def test_any_size_is_resized_to_the_model_input() -> None:
    pre = Preprocessor(SPEC32)
    for size in [(1, 1), (5000, 1), (300, 200), (28, 28)]:
        assert pre.from_image(Image.new("L", size, 128)).shape == (1, 32, 32)


def _ink() -> np.ndarray:
    a = np.zeros((28, 28), np.uint8)
    a[6:22, 12:16] = 255
    return a


@pytest.mark.parametrize(
    "mode", ["L", "RGB", "CMYK", "P", "1", "I;16", "I", "F", "RGBA", "LA", "YCbCr"]
)
def test_every_mode_becomes_8_bit_grayscale(mode: str) -> None:
    src = Image.fromarray(_ink())
    if mode == "I;16":
        image = Image.fromarray(_ink().astype(np.uint16) * 257)
    elif mode == "I":
        image = Image.fromarray(_ink().astype(np.int32) * 257)
    elif mode == "F":
        image = Image.fromarray(_ink().astype(np.float32) / 255.0)
    else:
        image = src.convert(mode)
    gray = to_grayscale(image)
    assert gray.mode == "L"
    arr = np.asarray(gray)
    # 16-bit and float images are scaled, not clipped: the stroke stays at full white.
    assert arr[10, 13] >= 250
    assert arr[0, 0] <= 5


def test_transparent_canvas_with_dark_ink_is_flattened_onto_white() -> None:
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[6:22, 12:16] = [0, 0, 0, 255]  # black strokes, transparent elsewhere
    gray = np.asarray(to_grayscale(Image.fromarray(rgba, "RGBA")))
    assert gray[10, 13] == 0
    assert gray[0, 0] == 255


def test_transparent_canvas_with_light_ink_is_flattened_onto_black() -> None:
    la = np.zeros((28, 28, 2), np.uint8)
    la[6:22, 12:16] = [255, 255]
    gray = np.asarray(to_grayscale(Image.fromarray(la, "LA")))
    assert gray[10, 13] == 255
    assert gray[0, 0] == 0


def test_exif_orientation_is_applied() -> None:
    arr = np.zeros((10, 20), np.uint8)
    arr[:, :5] = 255  # a bar on the left of a landscape image
    image = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs a 90-degree clockwise turn
    buf = __import__("io").BytesIO()
    image.save(buf, "JPEG", exif=exif.tobytes(), quality=100)
    upright = to_grayscale(Image.open(buf))
    assert upright.size == (10, 20)
    assert np.asarray(upright)[:5].mean() > 200  # the bar is now at the top


def test_image_to_uint8_layout() -> None:
    t = image_to_uint8(Image.fromarray(_ink()))
    assert t.dtype == torch.uint8
    assert t.shape == (1, 28, 28)


def _one_by_one(pre: Preprocessor, image: Image.Image, mode: str) -> torch.Tensor:
    """The per-image path as it was before from_images: one transform call per image."""
    gray = np.asarray(to_grayscale(image), dtype=np.uint8)
    return pre(image_to_uint8(normalize(gray, pre.spec.fit, mode)))  # type: ignore[arg-type]


@pytest.mark.parametrize("fit", ["digit", "object", "none"])
def test_batched_from_images_equals_image_by_image(mnist_test, fit: str) -> None:
    rng = np.random.default_rng(4)
    images = [Image.fromarray(mnist_test.images[i, 0].numpy()) for i in range(12)]
    images.append(Image.fromarray(255 - mnist_test.images[12, 0].numpy()))  # ink on white
    images.append(Image.fromarray(mnist_test.images[13, 0].numpy()).resize((112, 112)))
    rgba = np.zeros((40, 30, 4), np.uint8)
    rgba[8:32, 12:18] = [20, 20, 20, 255]  # dark strokes on a transparent canvas
    images.append(Image.fromarray(rgba, "RGBA"))
    images.append(Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8), "RGB"))
    for h, w in [(30, 40), (300, 200), (1, 1), (1, 300), (1200, 1000), (1200, 1000)]:
        images.append(Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)))
    order = rng.permutation(len(images))  # sizes interleaved, not grouped
    images = [images[i] for i in order]
    pre = Preprocessor(InputSpec(height=32, width=32, mean=[0.1307], std=[0.3081], fit=fit))
    for mode in ["auto", "dataset", "none"]:
        batch = pre.from_images(images, mode)  # type: ignore[arg-type]
        expected = torch.stack([_one_by_one(pre, im, mode) for im in images])
        assert batch.shape == (len(images), 1, 32, 32)
        assert torch.equal(batch, expected), mode
        assert torch.equal(pre.from_image(images[3], mode), expected[3])  # type: ignore[arg-type]
    assert pre.from_images([]).shape == (0, 1, 32, 32)


def test_fast_dataset_shaped_check_matches_its_definition(mnist_test, fashion_test) -> None:
    from training.normalize import (
        _looks_dataset_shaped_plain,
        dataset_shaped_each,
        looks_dataset_shaped,
    )

    rng = np.random.default_rng(7)
    arrays = []
    for split in (mnist_test, fashion_test):
        x = split.images[::3, 0].numpy()
        arrays += list(x) + list(255 - x[:500])
    for _ in range(2000):
        level = int(rng.integers(0, 256))
        a = np.full((28, 28), level) + rng.integers(-3, 4, (28, 28))  # even, noisy border
        b = np.full((28, 28), level)
        b[4:24, 6:20] = rng.integers(0, 256)  # one-level border, a block of another level
        c = rng.normal(level, rng.integers(1, 80), (28, 28))
        arrays += [np.clip(v, 0, 255).astype(np.uint8) for v in (a, b, c)]
        arrays.append(rng.integers(0, 256, (28, 28), dtype=np.uint8))
    answers = [looks_dataset_shaped(a) for a in arrays]
    assert answers == [_looks_dataset_shaped_plain(a) for a in arrays]
    assert 0 < sum(answers) < len(arrays)
    assert dataset_shaped_each(np.stack(arrays)).tolist() == answers  # the batched check


@pytest.mark.parametrize("fit", ["digit", "object", "none"])
def test_normalize_all_equals_normalize_one_by_one(mnist_test, fashion_test, fit: str) -> None:
    """The batched path returns normalize()'s arrays, in order, for runs of 28x28 images
    broken by other sizes (runs of 1 and 3, checked one by one, and longer ones, longer
    than the run it holds), and every kind of border."""
    rng = np.random.default_rng(11)
    grays: list[np.ndarray] = []
    for split in (mnist_test, fashion_test):
        x = split.images[:300, 0].numpy()
        grays += list(x) + list(255 - x[:40])  # dark and light backgrounds
    for _ in range(60):
        level = int(rng.integers(0, 256))
        noisy = np.full((28, 28), level) + rng.integers(-3, 4, (28, 28))
        grays.append(np.clip(noisy, 0, 255).astype(np.uint8))
        grays.append(rng.integers(0, 256, (28, 28), dtype=np.uint8))
    grays = [grays[i] for i in rng.permutation(len(grays))]
    for at, (h, w) in zip(
        [5, 7, 300, 304, 900], [(30, 40), (28, 29), (1, 1), (112, 112), (64, 28)], strict=True
    ):
        grays.insert(at, rng.integers(0, 256, (h, w), dtype=np.uint8))
    for mode in ["auto", "dataset", "none"]:
        expected = [normalize(g, fit, mode) for g in grays]  # type: ignore[arg-type]
        got = list(normalize_all(iter(grays), fit, mode))  # type: ignore[arg-type]
        assert len(got) == len(expected)
        for i, (a, b) in enumerate(zip(got, expected, strict=True)):
            assert a.dtype == b.dtype, (mode, i)
            assert np.array_equal(a, b), (mode, i)
    assert list(normalize_all([], "digit")) == []
