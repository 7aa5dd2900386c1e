"""Safe defaults: pickle-free checksum-verified weights, no model management over HTTP,
optional API key, CORS off unless configured, no tracebacks or paths in any answer."""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import logging
import os
import pickle
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from uvicorn.config import STARTUP_FAILURE

from app.config import Settings
from app.main import create_app
from tests.app.test_hostile_inputs import ACCEPTED, REJECTED, Digits, send
from tests.app.test_hostile_inputs import digits as digits  # the fixture
from tests.conftest import wait_until_ready
from tests.helpers import MODELS_DIR, REPO, encode, spawn
from training.loader import ModelLoadError, load_model

KEY = "s3cret-key-for-tests"
PNG = encode(np.zeros((28, 28), dtype=np.uint8))

# --------------------------------------------------------------------- weights loading


class _Payload:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


def _copy_model(tmp_path: Path, name: str = "mnist-lenet5") -> Path:
    return Path(shutil.copytree(MODELS_DIR / name, tmp_path / name))


def _set_weights(folder: Path, data: bytes, fmt: str | None = None) -> None:
    """Replace the weights and make the manifest's checksum match them."""
    (folder / "model.safetensors").write_bytes(data)
    manifest = json.loads((folder / "model.json").read_text())
    manifest["weights"]["sha256"] = hashlib.sha256(data).hexdigest()
    if fmt is not None:
        manifest["weights"]["format"] = fmt
    (folder / "model.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("fmt", [None, "pickle", "pytorch"])
def test_a_pickle_with_a_matching_checksum_never_runs(tmp_path: Path, fmt: str | None) -> None:
    folder = _copy_model(tmp_path)
    marker = tmp_path / "code-ran"
    _set_weights(folder, pickle.dumps(_Payload(marker)), fmt)
    with pytest.raises(ModelLoadError) as info:
        load_model(folder)
    assert not marker.exists()
    assert str(folder) in str(info.value)
    reason = info.value.reason
    assert (
        ("unreadable weights" in reason)
        if fmt is None
        else ("unsupported weights format" in reason)
    )


def test_weights_are_checked_before_they_are_read(tmp_path: Path) -> None:
    folder = _copy_model(tmp_path)
    marker = tmp_path / "code-ran"
    (folder / "model.safetensors").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ModelLoadError, match="checksum mismatch"):
        load_model(folder)
    assert not marker.exists()


_UNSAFE_CALLS = {
    ("torch", "load"),
    ("torch.jit", "load"),
    ("pickle", "load"),
    ("pickle", "loads"),
    ("pickle", "Unpickler"),
    ("dill", "load"),
    ("joblib", "load"),
    ("numpy", "load"),
    ("np", "load"),
}


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def test_no_pickle_capable_loader_in_the_service_or_training_code() -> None:
    """Static check: safetensors is the only way weights are read (training/loader.py)."""
    found = []
    for package in ("app", "training"):
        for path in sorted((REPO / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                    owner = _dotted(node.func.value)
                    if (owner, node.func.attr) in _UNSAFE_CALLS:
                        found.append(f"{path.relative_to(REPO)}:{node.lineno}")
                if isinstance(node, ast.ImportFrom) and node.module in ("pickle", "dill", "joblib"):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert found == []


# --------------------------------------------------------------------- no management API

API = {
    ("/predict", "post"),
    ("/models", "get"),
    ("/models/{name}", "get"),
    ("/health/live", "get"),
    ("/health/ready", "get"),
    ("/v2/health/live", "get"),
    ("/v2/health/ready", "get"),
    ("/v2", "get"),
    ("/v2/models/{model}", "get"),
    ("/v2/models/{model}/versions/{version}", "get"),
    ("/v2/models/{model}/ready", "get"),
    ("/v2/models/{model}/versions/{version}/ready", "get"),
    ("/v2/models/{model}/infer", "post"),
    ("/v2/models/{model}/versions/{version}/infer", "post"),
}
HIDDEN = ["/", "/metrics", "/openapi.json", "/docs", "/redoc"]  # GET-only, not in the schema


def test_the_only_operations_read_or_predict(client: TestClient) -> None:
    """No endpoint loads, registers, unloads or fetches models: the API is closed."""
    paths = client.get("/openapi.json").json()["paths"]
    assert {(path, method) for path, ops in paths.items() for method in ops} == API
    for path in HIDDEN:
        assert client.get(path).status_code == 200
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            assert client.request(method, path).status_code == 405, (method, path)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/models"),
        ("PUT", "/models/mnist-lenet5"),
        ("DELETE", "/models/mnist-lenet5"),
        ("POST", "/models/mnist-lenet5"),
        ("POST", "/models?url=http://127.0.0.1:1/evil.mar"),
    ],
)
def test_model_management_verbs_are_refused(client: TestClient, method: str, path: str) -> None:
    assert client.request(method, path).status_code == 405


def test_a_model_name_is_never_a_path_or_url(client: TestClient) -> None:
    for name in ("../mnist-lenet5", "http://127.0.0.1:1/m", str(MODELS_DIR / "mnist-lenet5")):
        response = client.post("/predict", params={"model": name}, files={"file": ("a.png", PNG)})
        assert response.status_code == 404
        response = client.get("/models/x", params={"name": name})
        assert response.status_code == 404


# --------------------------------------------------------------------- API key and CORS


def _app(**settings: object) -> Iterator[TestClient]:
    app = create_app(
        Settings(models_dir=MODELS_DIR, models=["mnist-lenet5"], device="cpu", torch_threads=1,
                 **settings)  # type: ignore[arg-type]
    )  # fmt: skip
    with TestClient(app, raise_server_exceptions=False) as c:
        wait_until_ready(c)
        yield c


@pytest.fixture(scope="module")
def keyed() -> Iterator[TestClient]:
    yield from _app(api_key=KEY)


@pytest.fixture(scope="module")
def cors() -> Iterator[TestClient]:
    yield from _app(cors_origins=["https://ok.example"])


PROTECTED = [
    ("POST", "/predict"),
    ("GET", "/models"),
    ("GET", "/models/mnist-lenet5"),
    ("GET", "/v2/models/mnist-lenet5"),
    ("GET", "/v2/models/mnist-lenet5/ready"),
]
# V2 inference takes the key too (tests/app/test_v2.py, with a V2 body).
OPEN = ["/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready", "/v2", "/metrics"]


def _call(c: TestClient, method: str, path: str, headers: dict[str, str]) -> int:
    files = {"file": ("a.png", PNG, "image/png")} if method == "POST" else None
    return c.request(method, path, headers=headers, files=files).status_code


def test_api_key_is_off_by_default(client: TestClient) -> None:
    assert Settings.model_fields["api_key"].default is None
    for method, path in PROTECTED:
        assert _call(client, method, path, {}) == 200


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}, {"Authorization": KEY},
     {"Authorization": f"Basic {KEY}"}, {"X-API-Key": KEY[:-1]}],
    ids=["none", "wrong-bearer", "wrong-x-api-key", "no-scheme", "basic", "prefix"],
)  # fmt: skip
def test_api_key_refuses(
    keyed: TestClient, method: str, path: str, headers: dict[str, str]
) -> None:
    response = keyed.request(
        method, path, headers=headers,
        files={"file": ("a.png", PNG, "image/png")} if method == "POST" else None,
    )  # fmt: skip
    assert response.status_code == 401
    key = "error" if path.startswith("/v2/") else "detail"  # V2's error shape
    rid = response.headers["x-request-id"]
    assert response.json() == {key: "missing or invalid API key", "request_id": rid}
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize("headers", [{"Authorization": f"Bearer {KEY}"}, {"X-API-Key": KEY}])
def test_api_key_accepts(
    keyed: TestClient, method: str, path: str, headers: dict[str, str]
) -> None:
    assert _call(keyed, method, path, headers) == 200


@pytest.mark.parametrize("path", OPEN)
def test_probes_and_metrics_stay_open(keyed: TestClient, path: str) -> None:
    assert keyed.get(path).status_code == 200


def test_without_a_key_the_upload_is_not_examined(keyed: TestClient) -> None:
    """Without a key, a bad upload gets 401, not a decode error about its content."""
    response = keyed.post("/predict", files={"file": ("x.png", b"junk", "image/png")})
    assert response.status_code == 401


def test_cors_is_off_by_default(client: TestClient) -> None:
    origin = {"Origin": "https://evil.example"}
    assert "access-control-allow-origin" not in client.get("/models", headers=origin).headers
    preflight = client.options(
        "/predict", headers={**origin, "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in preflight.headers
    assert preflight.status_code == 405


def test_cors_allows_only_configured_origins(cors: TestClient) -> None:
    ok = cors.get("/models", headers={"Origin": "https://ok.example"})
    assert ok.headers["access-control-allow-origin"] == "https://ok.example"
    evil = cors.get("/models", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in evil.headers
    preflight = cors.options(
        "/predict",
        headers={"Origin": "https://ok.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 200
    assert "POST" in preflight.headers["access-control-allow-methods"]
    refused = cors.options(
        "/predict",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert refused.status_code == 400


def test_cors_origins_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MNIST_SERVE_CORS_ORIGINS", "https://a.example, https://b.example")
    assert Settings().cors_origins == ["https://a.example", "https://b.example"]


# --------------------------------------------------------------------- no leaks in answers

LEAKS = (str(REPO), "/work/", "Traceback", 'File "', ".py")


def _no_leak(text: str) -> None:
    for leak in LEAKS:
        assert leak not in text, text


def test_no_answer_to_the_hostile_corpus_leaks_paths(client: TestClient, digits: Digits) -> None:
    for case in [*REJECTED, *ACCEPTED]:
        _no_leak(send(client, case.build(digits)).text)


def test_other_errors_do_not_leak(client: TestClient) -> None:
    for response in (
        client.get("/models/nope"),
        client.get("/nope"),
        client.post("/predict", params={"model": "nope"}, files={"file": ("a.png", PNG)}),
        client.post("/predict", params={"top_k": "x"}, files={"file": ("a.png", PNG)}),
        client.get("/models"),
        client.get("/"),
        client.get("/openapi.json"),
    ):
        _no_leak(response.text)


def test_an_unexpected_error_is_a_bare_500_with_the_traceback_only_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    for c in _app():
        serving = c.app.state.registry.models["mnist-lenet5"]  # type: ignore[attr-defined]

        def broken(*args: object, **kwargs: object) -> object:
            raise RuntimeError(f"boom in {REPO / 'app' / 'secret.py'}")

        serving.pipeline.model = broken  # the network itself fails
        with caplog.at_level(logging.ERROR, logger="app"):
            response = c.post("/predict", files={"file": ("a.png", PNG, "image/png")})
        assert response.status_code == 500
        rid = response.headers["x-request-id"]  # echoed by the outermost 500 handler too
        assert response.json() == {"detail": "internal server error", "request_id": rid}
        _no_leak(response.text)
        assert any(r.exc_info and "boom in" in str(r.exc_info[1]) for r in caplog.records)


def test_a_failed_start_answers_no_client(tmp_path: Path) -> None:
    """A server whose weights fail their check never accepts a request: the reason, which
    names folders on disk, goes to its log only, and it exits with the start-up code."""
    folder = _copy_model(tmp_path)
    (folder / "model.safetensors").write_bytes(b"tampered")
    server = spawn({"MNIST_SERVE_MODELS_DIR": str(tmp_path)})
    answers: list[httpx.Response] = []
    deadline = time.monotonic() + 60  # generous: a hang fails, no timing is asserted
    while server.process.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            answers.append(httpx.get(f"{server.url}/health/ready", timeout=1))
        time.sleep(0.02)
    if server.process.poll() is None:
        server.process.kill()
    assert server.process.wait(timeout=30) == STARTUP_FAILURE
    assert answers == []
    assert "checksum mismatch" in server.output()
