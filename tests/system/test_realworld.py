"""Upload normalization (training/normalize.py) and the realistic upload set, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from bench.realworld import KINDS, evaluate_folder, find_fonts, generate
from tests.helpers import MODELS_DIR, encode
from training.loader import read_manifest
from training.normalize import CANVAS, looks_dataset_shaped, normalize
from training.preprocess import InputSpec, Preprocessor, to_grayscale

DIGIT_SPEC = InputSpec(height=32, width=32, mean=[0.1307], std=[0.3081], fit="digit")


def _centre_of_mass(a: np.ndarray) -> tuple[float, float]:
    ys, xs = np.indices(a.shape)
    total = a.astype(np.float64).sum()
    return float((ys * a).sum() / total), float((xs * a).sum() / total)


def _bbox(a: np.ndarray, level: int = 0) -> tuple[int, int]:
    rows, cols = np.flatnonzero((a > level).any(1)), np.flatnonzero((a > level).any(0))
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two images, at the best shift of up to 1 px (rounding may move one)."""
    return max(
        float(np.corrcoef(np.roll(a, (dy, dx), (0, 1)).ravel(), b.ravel().astype(float))[0, 1])
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
    )


def test_dataset_shaped_images_pass_through_bit_for_bit(mnist_test, fashion_test) -> None:
    for split, fit in [(mnist_test, "digit"), (fashion_test, "object")]:
        for i in range(0, 2000, 7):
            img = split.images[i, 0].numpy()
            assert looks_dataset_shaped(img)
            assert normalize(img, fit, "auto") is img  # type: ignore[arg-type]
    pre = Preprocessor(DIGIT_SPEC)
    for i in range(20):
        image = Image.fromarray(mnist_test.images[i, 0].numpy())
        assert torch.equal(pre.from_image(image, "auto"), pre(mnist_test.images[i]))


def test_inverted_digit_is_inverted_back(mnist_test) -> None:
    for i in range(10):
        original = mnist_test.images[i, 0].numpy()
        upload = 255 - original  # black ink on white, 28x28
        assert not looks_dataset_shaped(upload)
        out = normalize(upload, "digit", "auto")
        assert out.shape == (CANVAS, CANVAS)
        assert out[0, 0] == 0  # light ink on black again
        assert out.max() == 255
        assert _corr(out, original) > 0.8


def test_off_centre_large_digit_is_cropped_scaled_and_centred(mnist_test) -> None:
    digit = np.asarray(Image.fromarray(mnist_test.images[0, 0].numpy()).resize((90, 90)))
    canvas = np.zeros((300, 400), np.uint8)
    canvas[10:100, 290:380] = digit  # top right corner
    out = normalize(canvas, "digit", "auto")
    assert out.shape == (CANVAS, CANVAS)
    cy, cx = _centre_of_mass(out)
    assert abs(cy - 13.5) <= 1
    assert abs(cx - 13.5) <= 1
    assert max(_bbox(out, 20)) in (19, 20, 21)  # MNIST's 20 px box
    assert _corr(out, mnist_test.images[0, 0].numpy()) > 0.8


def test_photo_of_dark_ink_under_uneven_light_and_noise(mnist_test) -> None:
    rng = np.random.default_rng(0)
    h, w = 240, 320
    yy, xx = np.mgrid[0:h, 0:w]
    paper = 120 + 90 * xx / w + 20 * yy / h  # strong left-to-right gradient
    ink = np.zeros((h, w))
    ink[150:206, 40:96] = np.asarray(
        Image.fromarray(mnist_test.images[1, 0].numpy()).resize((56, 56)), float
    )
    photo = paper * (1 - 0.6 * ink / 255) + rng.normal(0, 4, (h, w))
    out = normalize(np.clip(photo, 0, 255).astype(np.uint8), "digit", "auto")
    cy, cx = _centre_of_mass(out)
    assert abs(cy - 13.5) <= 1
    assert abs(cx - 13.5) <= 1
    assert out[:3].max() < 64  # no lighting left at the edges
    assert out[:, :3].max() < 64
    assert _corr(out, mnist_test.images[1, 0].numpy()) > 0.7


def test_object_recipe_fits_the_longer_side_to_28_and_centres_the_box() -> None:
    img = np.full((200, 300), 250, np.uint8)
    img[50:150, 20:70] = 40  # a dark 100x50 item on white, left of centre
    out = normalize(img, "object", "auto")
    assert _bbox(out, 16) == (28, 14)
    cols = np.flatnonzero(out.max(0) > 16)
    assert abs((cols[0] + cols[-1]) / 2 - 13.5) <= 0.5
    assert out[0, 0] == 0
    assert out[14, 13] > 150


def test_modes_and_fit_none(mnist_test) -> None:
    img = mnist_test.images[3, 0].numpy()
    assert normalize(img, "digit", "none") is img
    assert normalize(255 - img, "digit", "none").tolist() == (255 - img).tolist()
    assert normalize(255 - img, "none", "dataset").tolist() == (255 - img).tolist()
    forced = normalize(img, "digit", "dataset")  # the recipe runs even on a dataset image
    assert forced is not img
    assert _corr(forced, img) > 0.9
    assert not normalize(np.full((50, 50), 255, np.uint8), "digit", "auto").any()  # blank


def test_old_manifests_without_fit_load_as_none() -> None:
    data = json.loads((MODELS_DIR / "mnist-lenet5" / "model.json").read_text())
    data["input"].pop("fit", None)
    assert InputSpec.model_validate(data["input"]).fit == "none"
    assert read_manifest(MODELS_DIR / "mnist-lenet5").input.fit == "digit"


def _post(client: TestClient, image: np.ndarray, mode: str | None) -> dict[str, object]:
    params = {"model": "mnist-lenet5", **({"preprocess": mode} if mode else {})}
    r = client.post("/predict", params=params, files={"file": ("x.png", encode(image))})
    assert r.status_code == 200, r.text
    return r.json()["predictions"][0]  # type: ignore[no-any-return]


def test_predict_takes_the_preprocess_parameter(client: TestClient, mnist_test) -> None:
    original = mnist_test.images[0, 0].numpy()
    label = int(mnist_test.labels[0])
    upload = np.asarray(Image.fromarray(255 - original).resize((200, 200)))
    assert _post(client, upload, None)["class_index"] == label  # default: auto
    assert _post(client, upload, "auto") == _post(client, upload, None)
    assert _post(client, upload, "dataset")["class_index"] == label
    # Dataset-shaped: auto changes nothing.
    assert _post(client, original, "auto") == _post(client, original, "none")
    r = client.post("/predict", params={"preprocess": "magic"}, files={"file": encode(original)})
    assert r.status_code == 422
    doc = client.get("/openapi.json").json()["paths"]["/predict"]["post"]["parameters"]
    assert any(p["name"] == "preprocess" and "dataset" in p["description"] for p in doc)


def test_serving_path_normalizes_like_the_offline_path(mnist_test) -> None:
    pre = Preprocessor(DIGIT_SPEC)
    upload = Image.fromarray(255 - mnist_test.images[5, 0].numpy()).resize((120, 90))
    gray = np.asarray(to_grayscale(upload))
    expected = pre(torch.from_numpy(normalize(gray, "digit", "auto")).unsqueeze(0))
    assert torch.equal(pre.from_image(upload), expected)


@pytest.fixture(scope="module")
def realistic_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("realworld")
    generate(out, seed=1, per_kind=100)
    return out


def test_generator_is_deterministic_and_uses_only_test_splits(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", seed=3, per_kind=4)
    b = generate(tmp_path / "b", seed=3, per_kind=4)
    assert a == b
    for s in a:
        assert (tmp_path / "a" / s.file).read_bytes() == (tmp_path / "b" / s.file).read_bytes()
        assert s.source.startswith("test[") or s.kind == "font-digits"


# The targets on the realistic set, through the service with preprocess=auto.
TARGETS = {
    "mnist-inverted": 0.98,
    "mnist-photo": 0.95,
    "font-digits": 0.93,
    "fashion-inverted": 0.88,
}


def test_realistic_uploads_reach_the_targets_through_the_service(
    client: TestClient, realistic_set: Path
) -> None:
    rows = evaluate_folder(realistic_set, client, ("none", "auto"))
    kinds = {r.kind for r in rows}
    assert kinds == set(KINDS) - (set() if find_fonts() else {"font-digits"})
    for row in rows:
        if row.kind in TARGETS:
            assert row.accuracy["auto"] >= TARGETS[row.kind], row
            assert row.accuracy["none"] < row.accuracy["auto"] - 0.3, row
        else:  # the original test images: identical answers either way
            assert row.accuracy["auto"] == row.accuracy["none"], row


@pytest.mark.skipif(not find_fonts(), reason="no handwriting fonts (see docs/real-world.md)")
def test_handwriting_fonts_are_found() -> None:
    assert len(find_fonts()) >= 10
