"""The HTTP contract of the service, in-process (TestClient, lifespan run)."""

from __future__ import annotations

import base64
import io
import json
import zlib
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, NoReturn

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from app.batching import Output
from app.config import Settings
from app.main import create_app
from app.registry import Registry, StartupError
from app.routes.predict import PredictRoute
from app.routes.predict import encode as encode_predict
from app.schemas import PredictResponse
from tests.conftest import wait_until_ready
from tests.helpers import MODELS_DIR, encode
from training.loader import load_model


def _files(*blobs: bytes, name: str = "digit.png") -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("file", (f"{i}-{name}", b, "image/png")) for i, b in enumerate(blobs)]


@pytest.fixture
def small_client() -> Iterator[TestClient]:
    """One model and tight limits, to reach every limit cheaply."""
    settings = Settings(
        models_dir=MODELS_DIR, models=["mnist-lenet5"], device="cpu", torch_threads=1,
        max_body_bytes=200_000, max_files=3, max_image_pixels=1_000_000,
    )  # fmt: skip
    with TestClient(create_app(settings)) as c:
        wait_until_ready(c)
        yield c


# --- health, models, docs ---------------------------------------------------------------


@pytest.mark.parametrize("path", ["/health/live", "/v2/health/live"])
def test_liveness(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 200
    assert r.json()["status"] == "alive"


@pytest.mark.parametrize("path", ["/health/ready", "/v2/health/ready"])
def test_readiness_lists_every_model_once_loaded(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "models": sorted(p.name for p in MODELS_DIR.iterdir())}


def test_the_app_serves_only_once_its_models_are_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    original = Registry.load

    def recorded_load(self: Registry, device: torch.device) -> None:
        events.append("loading")
        original(self, device)
        events.append("loaded")

    monkeypatch.setattr(Registry, "load", recorded_load)
    settings = Settings(models_dir=MODELS_DIR, models=["mnist-lenet5"], device="cpu")
    with TestClient(create_app(settings)) as c:
        assert events == ["loading", "loaded"]  # the lifespan's start-up waited for the load
        assert c.get("/health/ready").status_code == 200


def test_readiness_is_503_while_draining(small_client: TestClient) -> None:
    registry = small_client.app.state.registry  # type: ignore[attr-defined]
    registry.draining = True
    try:
        r = small_client.get("/v2/health/ready")
        assert r.status_code == 503
        assert r.json()["detail"] == "shutting down"
        assert small_client.get("/health/live").status_code == 200
    finally:
        registry.draining = False


def test_a_start_up_failure_goes_to_the_fatal_hook_in_one_line(tmp_path) -> None:
    class Stopped(Exception):
        pass

    reasons: list[str] = []

    def on_fatal(reason: str) -> NoReturn:
        reasons.append(reason)
        raise Stopped

    settings = Settings(models_dir=tmp_path, device="cpu")
    with pytest.raises(Stopped), TestClient(create_app(settings, on_fatal=on_fatal)):
        pass
    assert len(reasons) == 1
    assert "no model folders" in reasons[0]
    assert "\n" not in reasons[0]
    # Embedded without a hook, the app raises the failure instead.
    with pytest.raises(StartupError, match="no model folders"), TestClient(create_app(settings)):
        pass


def test_models_lists_manifests(client: TestClient) -> None:
    body = client.get("/models").json()
    assert body["default_model"] == "mnist-lenet5"
    by_name = {m["name"]: m for m in body["models"]}
    lenet = by_name["mnist-lenet5"]
    assert lenet["default"] is True
    assert lenet["architecture"]["name"] == "lenet5"
    assert (lenet["input"]["height"], lenet["input"]["width"]) == (32, 32)
    assert lenet["classes"] == [str(d) for d in range(10)]
    assert lenet["metrics"]["test_accuracy"] >= 0.99
    assert lenet["device"] == "cpu"
    assert by_name["fashion-mlp"]["classes"][-1] == "Ankle boot"


def test_one_model_and_404(client: TestClient) -> None:
    assert client.get("/models/fashion-mlp").json()["dataset"] == "fashion-mnist"
    r = client.get("/models/nope")
    assert r.status_code == 404
    assert "nope" in r.json()["detail"]


def test_openapi_documents_predict(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    op = spec["paths"]["/predict"]["post"]
    assert set(op["requestBody"]["content"]) == {"multipart/form-data", "image/*"}
    assert {"400", "404", "413", "415", "422"} <= set(op["responses"])
    schema = spec["components"]["schemas"]["PredictResponse"]
    assert schema["examples"][0]["predictions"][0]["label"] == "7"
    ok = op["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/PredictResponse"}
    params = {p["name"] for p in op["parameters"]}
    assert params == {"model", "top_k", "preprocess", "include_input"}
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize(
    "query", [{}, {"top_k": "3"}, {"include_input": "true"}, {"model": "fashion-mlp"}]
)
def test_responses_are_the_documented_model(client: TestClient, mnist_test, query) -> None:
    """What the encoder builds is exactly what PredictResponse describes: it validates, and
    dumping the validated model (unset fields left out) gives the same JSON back."""
    r = client.post(
        "/predict", params=query, files=_files(*(encode(x) for x in mnist_test.images[:3]))
    )
    assert r.status_code == 200
    model = PredictResponse.model_validate_json(r.content, strict=True)
    assert model.model_dump(exclude_unset=True) == r.json()
    assert len(model.predictions) == 3
    shown = [p.input_image is not None for p in model.predictions]
    assert shown == [query.get("include_input") == "true"] * 3
    assert [p.top_k is not None for p in model.predictions] == ["top_k" in query] * 3


def test_include_input_shows_what_the_model_saw(client: TestClient, mnist_test) -> None:
    """A white-background photo-like upload comes back as the fitted digit, at the model's
    input size, light on dark as in MNIST."""
    digit = 255 - mnist_test.images[0, 0].numpy()  # dark ink on white paper
    big = Image.fromarray(digit).resize((200, 200))
    r = client.post("/predict", params={"include_input": "true"}, files=_files(encode(big)))
    pred = r.json()["predictions"][0]
    assert pred["label"] == str(int(mnist_test.labels[0]))
    prefix = "data:image/png;base64,"
    assert pred["input_image"].startswith(prefix)
    seen = Image.open(io.BytesIO(base64.b64decode(pred["input_image"][len(prefix) :])))
    assert (seen.mode, seen.size) == ("L", (32, 32))  # LeNet-5's input
    pixels = np.asarray(seen)
    assert pixels[0].max() < 30
    assert pixels[-1].max() < 30
    assert pixels.max() > 200  # light ink


# --- /predict -------------------------------------------------------------------------


def test_predict_one_file(client: TestClient, mnist_test) -> None:
    r = client.post("/predict", files=_files(encode(mnist_test.images[0])))
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == "mnist-lenet5"
    (pred,) = body["predictions"]
    assert pred["label"] == str(int(mnist_test.labels[0]))
    assert pred["class_index"] == int(mnist_test.labels[0])
    assert set(pred["probabilities"]) == {str(d) for d in range(10)}
    assert sum(pred["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert pred["probability"] == max(pred["probabilities"].values())
    assert "top_k" not in pred


def test_predict_several_files_keeps_upload_order(client: TestClient, mnist_test) -> None:
    idx = list(range(10, 26))
    r = client.post("/predict", files=_files(*(encode(mnist_test.images[i]) for i in idx)))
    labels = [p["label"] for p in r.json()["predictions"]]
    expected = [str(int(mnist_test.labels[i])) for i in idx]
    assert sum(a == b for a, b in zip(labels, expected, strict=True)) >= 15
    # The same images one at a time give the same answers: batching changes nothing.
    singles = [
        client.post("/predict", files=_files(encode(mnist_test.images[i]))).json()["predictions"][0]
        for i in idx[:4]
    ]
    for batched, single in zip(r.json()["predictions"], singles, strict=False):
        for k, p in single["probabilities"].items():
            assert batched["probabilities"][k] == pytest.approx(p, abs=1e-5)


def test_predict_raw_body_and_top_k(client: TestClient, mnist_test) -> None:
    r = client.post(
        "/predict?top_k=3",
        content=encode(mnist_test.images[1]),
        headers={"content-type": "image/png"},
    )
    (pred,) = r.json()["predictions"]
    top = pred["top_k"]
    assert len(top) == 3
    assert top[0]["label"] == pred["label"]
    assert [t["probability"] for t in top] == sorted((t["probability"] for t in top), reverse=True)
    assert top[1]["probability"] == sorted(pred["probabilities"].values())[-2]


def test_top_k_larger_than_the_class_count_lists_every_class(
    client: TestClient, mnist_test
) -> None:
    r = client.post("/predict?top_k=50", files=_files(encode(mnist_test.images[1])))
    assert len(r.json()["predictions"][0]["top_k"]) == 10


def test_predict_with_another_model(client: TestClient, fashion_test) -> None:
    r = client.post("/predict?model=fashion-mlp", files=_files(encode(fashion_test.images[0])))
    body = r.json()
    assert body["model"] == "fashion-mlp"
    classes = load_model(MODELS_DIR / "fashion-mlp").manifest.classes
    assert body["predictions"][0]["label"] == classes[int(fashion_test.labels[0])]
    assert set(body["predictions"][0]["probabilities"]) == set(classes)


def test_jpeg_rgb_and_large_uploads_are_accepted(client: TestClient, mnist_test) -> None:
    digit = Image.fromarray(mnist_test.images[3, 0].numpy())
    big = digit.resize((400, 400), Image.Resampling.BICUBIC).convert("RGB")
    r = client.post("/predict", files=_files(encode(big, "JPEG", quality=95), name="photo.jpg"))
    assert r.status_code == 200
    assert r.json()["predictions"][0]["label"] == str(int(mnist_test.labels[3]))


# --- no skew between training and serving --------------------------------------------


def _offline_probs(name: str, images: torch.Tensor) -> torch.Tensor:
    loaded = load_model(MODELS_DIR / name)
    with torch.no_grad():
        return torch.softmax(loaded.model(loaded.preprocessor(images)), 1)


@pytest.mark.parametrize("name", ["mnist-lenet5", "mnist-lenet3x3"])
def test_served_probabilities_equal_offline_evaluation(
    client: TestClient, mnist_test, name
) -> None:
    offline = _offline_probs(name, mnist_test.images[:8])
    r = client.post(
        f"/predict?model={name}", files=_files(*(encode(x) for x in mnist_test.images[:8]))
    )
    for i, pred in enumerate(r.json()["predictions"]):
        served = torch.tensor([pred["probabilities"][str(c)] for c in range(10)])
        assert torch.allclose(served, offline[i], atol=1e-5)


def test_service_accuracy_equals_offline_accuracy_on_500_pngs(
    client: TestClient, mnist_test
) -> None:
    images, labels = mnist_test.images[:500], mnist_test.labels[:500]
    offline = _offline_probs("mnist-lenet5", images).argmax(1)
    served: list[int] = []
    for start in range(0, 500, 50):
        blobs = [encode(x) for x in images[start : start + 50]]
        preds = client.post("/predict", files=_files(*blobs)).json()["predictions"]
        served += [p["class_index"] for p in preds]
    assert served == offline.tolist()
    assert (torch.tensor(served) == labels).float().mean() == (offline == labels).float().mean()


# --- errors and limits ----------------------------------------------------------------


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return len(data).to_bytes(4, "big") + kind + data + crc.to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _png_bomb(side: int) -> bytes:
    """A real 1-bit side x side PNG of zeros: ~100 KB that would decode to side^2 pixels."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + (side + 7) // 8)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    head = _png_header_only(side, side)[:-12]  # drop IEND

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
        )

    return head + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00garbage", 400, "corrupt image header"),
        (b"\x00\x01\x02random bytes\xff\xfe", 400, "not a decodable image"),
        (b"hello, I am text", 415, "text is not an image type"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", 415, "PDF document"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', 415, "XML"),
        (b"PK\x03\x04\x14\x00\x00\x00", 415, "ZIP archive"),
        (b"", 400, "empty file"),
    ],
)
def test_bad_uploads_get_a_clear_4xx_naming_the_file(
    client: TestClient, body: bytes, status: int, fragment: str
) -> None:
    r = client.post("/predict", files=[("file", ("evil.png", body, "image/png"))])
    assert r.status_code == status
    assert fragment in r.json()["detail"]
    assert "evil.png" in r.json()["detail"]


def test_truncated_png_is_400(client: TestClient, mnist_test) -> None:
    png = encode(mnist_test.images[0])
    r = client.post("/predict", files=_files(encode(mnist_test.images[1]), png[: len(png) // 2]))
    assert r.status_code == 400
    assert "file #2" in r.json()["detail"]
    assert "truncated or corrupt PNG" in r.json()["detail"]


def test_pixel_bomb_is_413_before_decoding(client: TestClient) -> None:
    bomb = _png_bomb(30_000)
    assert len(bomb) < 300_000
    r = client.post("/predict", files=_files(bomb, name="bomb.png"))
    assert r.status_code == 413
    assert "30000x30000" in r.json()["detail"]
    r = client.post("/predict", files=_files(_png_header_only(65535, 65535)))
    assert r.status_code == 413


def test_zero_width_header_is_400(client: TestClient) -> None:
    r = client.post("/predict", files=_files(_png_header_only(0, 28)))
    assert r.status_code == 400


def test_body_over_the_limit_is_413(small_client: TestClient) -> None:
    r = small_client.post(
        "/predict", content=b"\x00" * 300_000, headers={"content-type": "image/png"}
    )
    assert r.status_code == 413
    assert "200,000 bytes" in r.json()["detail"]


def test_chunked_body_over_the_limit_is_413(small_client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            yield b"\x00" * 10_000

    r = small_client.post("/predict", content=chunks(), headers={"content-type": "image/png"})
    assert r.status_code == 413


def test_too_many_files_is_413(small_client: TestClient, mnist_test) -> None:
    png = encode(mnist_test.images[0])
    r = small_client.post("/predict", files=_files(png, png, png, png))
    assert r.status_code == 413
    assert "at most 3" in r.json()["detail"]
    assert small_client.post("/predict", files=_files(png, png, png)).status_code == 200


def test_pixel_limit_is_configurable(small_client: TestClient) -> None:
    r = small_client.post("/predict", files=_files(encode(Image.new("L", (1001, 1000)))))
    assert r.status_code == 413
    r = small_client.post("/predict", files=_files(encode(Image.new("L", (1000, 1000)))))
    assert r.status_code == 200


def test_no_file_is_422(client: TestClient) -> None:
    r = client.post("/predict")
    assert r.status_code == 422
    assert "no image" in r.json()["detail"]
    r = client.post("/predict", files=[("other", ("a.png", b"123", "image/png"))])
    assert r.status_code == 422
    assert "no part named 'file'" in r.json()["detail"]
    r = client.post(
        "/predict", data={"file": "not a file"}, files=[("x", ("a", b"1", "text/plain"))]
    )
    assert r.status_code == 422


def test_unknown_model_is_404(client: TestClient, mnist_test) -> None:
    r = client.post("/predict?model=resnet", files=_files(encode(mnist_test.images[0])))
    assert r.status_code == 404
    assert "resnet" in r.json()["detail"]


def test_wrong_content_type_is_415(client: TestClient) -> None:
    r = client.post("/predict", json={"image": "base64..."})
    assert r.status_code == 415
    assert "application/json" in r.json()["detail"]


def test_bad_top_k_is_422(client: TestClient, mnist_test) -> None:
    assert (
        client.post("/predict?top_k=0", files=_files(encode(mnist_test.images[0]))).status_code
        == 422
    )


def test_unexpected_errors_are_a_generic_500(
    small_client: TestClient, mnist_test, monkeypatch
) -> None:
    serving = small_client.app.state.registry.models["mnist-lenet5"]  # type: ignore[attr-defined]

    def broken(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("secret internal detail /work/main")

    monkeypatch.setattr(serving.pipeline, "model", broken)
    client = TestClient(small_client.app, raise_server_exceptions=False)
    r = client.post("/predict", files=_files(encode(mnist_test.images[0])))
    assert r.status_code == 500
    assert r.json() == {"detail": "internal server error", "request_id": r.headers["x-request-id"]}
    monkeypatch.undo()
    # The batch worker survived the failure.
    assert (
        small_client.post("/predict", files=_files(encode(mnist_test.images[0]))).status_code == 200
    )


# --- metrics --------------------------------------------------------------------------


def test_metrics_count_requests_batches_and_images(client: TestClient, mnist_test) -> None:
    client.post(
        "/predict?model=mnist-lenet3x3", files=_files(*(encode(x) for x in mnist_test.images[:5]))
    )
    text = client.get("/metrics").text
    assert 'mnist_serve_images_classified_total{model="mnist-lenet3x3"}' in text
    assert 'mnist_serve_batch_size_bucket{le="8.0",model="mnist-lenet3x3"}' in text
    assert 'mnist_serve_requests_total{method="POST",route="/predict",status="200"}' in text
    assert "mnist_serve_inference_duration_seconds_bucket" in text
    assert "mnist_serve_request_duration_seconds_bucket" in text
    assert f"mnist_serve_models_loaded {len(list(MODELS_DIR.iterdir()))}.0" in text
    assert 'mnist_serve_device_info{device="cpu"} 1.0' in text


# --- a real uvicorn process ----------------------------------------------------------


@pytest.mark.slow
def test_real_server_answers_like_the_in_process_app(
    server, client: TestClient, mnist_test
) -> None:
    files = _files(*(encode(x) for x in mnist_test.images[:3]))
    real = httpx.post(f"{server.url}/predict?top_k=2", files=files, timeout=30)
    assert real.status_code == 200
    local = client.post("/predict?top_k=2", files=files).json()
    for a, b in zip(real.json()["predictions"], local["predictions"], strict=True):
        assert a["label"] == b["label"]
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-6)
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    raw = httpx.post(
        f"{server.url}/predict", content=io.BytesIO(encode(mnist_test.images[0])).read(),
        headers={"content-type": "image/png"},
    )  # fmt: skip
    assert raw.json()["predictions"][0]["label"] == str(int(mnist_test.labels[0]))


# --- GPU ------------------------------------------------------------------------------


@pytest.mark.gpu
def test_models_sit_on_the_gpu_and_agree_with_the_cpu(mnist_test) -> None:
    settings = Settings(models_dir=MODELS_DIR, device="cuda")
    with TestClient(create_app(settings)) as c:
        wait_until_ready(c)
        assert all(m["device"].startswith("cuda") for m in c.get("/models").json()["models"])
        r = c.post("/predict", files=_files(*(encode(x) for x in mnist_test.images[:8])))
    offline = _offline_probs("mnist-lenet5", mnist_test.images[:8])
    for i, pred in enumerate(r.json()["predictions"]):
        served = torch.tensor([pred["probabilities"][str(k)] for k in range(10)])
        assert torch.allclose(served, offline[i], atol=1e-4)


def test_the_encoder_names_the_first_of_equal_maxima() -> None:
    probs = torch.tensor([[0.2, 0.4, 0.4], [0.5, 0.25, 0.25], [0.1, 0.1, 0.8]])
    pipeline = SimpleNamespace(name="m", classes=["a", "b", "c"])
    output = Output(torch.zeros(3, 1, 2, 2), probs)
    body = json.loads(encode_predict(pipeline, 2, False, output))  # type: ignore[arg-type]
    rows = body["predictions"]
    assert [(r["label"], r["class_index"]) for r in rows] == [("b", 1), ("a", 0), ("c", 2)]
    assert [r["probability"] for r in rows] == pytest.approx([0.4, 0.5, 0.8])
    assert rows[0]["probabilities"] == pytest.approx({"a": 0.2, "b": 0.4, "c": 0.4})
    assert [[t["label"] for t in r["top_k"]] for r in rows] == [["b", "c"], ["a", "b"], ["c", "a"]]


def test_predict_route_answers_as_fastapi_serves_the_declaration(mnist_test) -> None:
    """PredictRoute resolves predict()'s dependency and query model itself: every answer
    must be the one FastAPI gives when it serves the declaration on its own."""
    settings = Settings(
        models_dir=MODELS_DIR, models=["mnist-lenet5", "fashion-mlp"], device="cpu",
        torch_threads=1, api_key="sesame",
    )  # fmt: skip
    fast = create_app(settings)
    plain = create_app(settings)
    plain.router.routes[:] = [r for r in plain.router.routes if not isinstance(r, PredictRoute)]
    key = {"X-API-Key": "sesame"}
    image = _files(encode(mnist_test.images[0]))
    cases: list[tuple[dict[str, str], dict[str, str], Any]] = [
        ({}, key, image),
        ({"top_k": "3", "include_input": "true", "preprocess": "dataset"}, key, image),
        ({"model": "fashion-mlp"}, key, image),
        ({}, {}, image),  # no key
        ({}, {"Authorization": "Bearer wrong"}, image),
        ({"top_k": "0"}, key, image),
        ({"top_k": "x", "preprocess": "odd"}, key, image),
        ({"model": "nope"}, key, image),
        ({}, key, None),  # no body
    ]
    with TestClient(fast) as a, TestClient(plain) as b:
        assert any(isinstance(r, PredictRoute) for r in a.app.router.routes)  # type: ignore[attr-defined]
        for params, headers, files in cases:
            got, want = (
                c.post("/predict", params=params, headers=headers, files=files) for c in (a, b)
            )
            assert got.status_code == want.status_code, (params, headers)
            strip = {"request_id"}
            assert {k: v for k, v in got.json().items() if k not in strip} == {
                k: v for k, v in want.json().items() if k not in strip
            }, (params, headers)
            assert got.headers.get("www-authenticate") == want.headers.get("www-authenticate")
