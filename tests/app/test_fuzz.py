"""Fuzzing: schemathesis against the service's own OpenAPI schema, and hypothesis feeding
mutated real images to ``/predict``. Both in-process (ASGI), both bounded; zero 5xx."""

from __future__ import annotations

import struct
import time
import zlib

import numpy as np
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from PIL import Image
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.python.asgi import get_client
from schemathesis.schemas import APIOperation

from app.config import Settings
from app.errors import is_v2
from app.main import create_app
from tests.helpers import MODELS_DIR, encode
from training.datasets import Split

SCHEMA_EXAMPLES = 50  # per operation and generation mode
MUTATION_EXAMPLES = 300

# ---------------------------------------------------------------------------- schemathesis


@pytest.fixture(scope="module")
def fuzzed_app() -> FastAPI:
    return create_app(Settings(models_dir=MODELS_DIR, device="cpu", torch_threads=1))


@pytest.fixture(scope="module")
def api_schema(fuzzed_app: FastAPI) -> schemathesis.schemas.BaseSchema:
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzzed_app)  # starts the lifespan
    with get_client(fuzzed_app) as client:
        deadline = time.monotonic() + 60  # generous: only a hang fails here
        while client.get("/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "models did not load"
            time.sleep(0.05)
    return schema


def fuzz_operation(operation: APIOperation, mode: GenerationMode, codes: set[int]) -> None:
    @settings(
        max_examples=SCHEMA_EXAMPLES,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        if mode is GenerationMode.POSITIVE and case.path.startswith("/v2/models/"):
            # A real model and version, so that V2's request bodies reach the model.
            case.path_parameters = {**(case.path_parameters or {}), "model": "mnist-lenet5"}
            if "version" in case.path_parameters:
                case.path_parameters["version"] = "1"
        response = case.call()
        codes.add(response.status_code)
        case.validate_response(response, checks=[not_a_server_error])
        assert response.status_code < 500, response.text
        if response.status_code >= 400:
            # V2's routes answer {"error": ...}, the others {"detail": ...}.
            v2 = is_v2(case.path) and not case.path.startswith("/v2/health")
            assert ("error" if v2 else "detail") in response.json()

    try:
        run()
    except Unsatisfiable:
        # an operation without parameters or body has no invalid input to generate
        if mode is not GenerationMode.NEGATIVE:
            raise


def test_api_never_answers_5xx(api_schema: schemathesis.schemas.BaseSchema) -> None:
    """Every operation, valid (positive) and invalid (negative) inputs, bounded examples.

    (The schemathesis pytest plugin does not run under this pytest version, so each
    operation's strategy drives a plain hypothesis test.)"""
    seen: dict[str, set[int]] = {}
    for result in api_schema.get_all_operations():
        operation = result.ok()
        codes = seen.setdefault(operation.label, set())
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz_operation(operation, mode, codes)
    print({label: sorted(codes) for label, codes in seen.items()})
    assert len(seen) >= 14, seen  # every documented operation was exercised
    assert all(codes for codes in seen.values()), seen


# ---------------------------------------------------------------------------- mutations


def fix_png_crcs(data: bytes) -> bytes:
    """Recompute every chunk CRC, so mutations reach the decoder past the CRC check."""
    out, at = bytearray(data[:8]), 8
    while at + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, at)
        end = at + 8 + length
        if end + 4 > len(data):
            break
        out += data[at:end] + struct.pack(">I", zlib.crc32(data[at + 4 : end]))
        at = end + 4
    return bytes(out + data[at:])


@pytest.fixture(scope="module")
def seeds(mnist_test: Split) -> list[bytes]:
    """Real digits in every accepted format."""
    digit = mnist_test.images[0, 0].numpy()
    gray = Image.fromarray(digit)
    rgb = gray.convert("RGB")
    return [
        encode(gray, "PNG"),
        encode(gray.convert("RGBA"), "PNG"),
        encode(rgb, "JPEG", quality=90),
        encode(rgb, "JPEG", quality=90, progressive=True),
        encode(gray, "GIF"),
        encode(gray, "BMP"),
        encode(rgb, "WEBP", quality=80),
        encode(gray, "TIFF"),
        encode(Image.fromarray(digit.astype(np.uint16) * 257), "PNG"),
    ]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        kind = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "repeat"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[at] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, draw(st.integers(0, 255))]))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        else:
            data[at:at] = data[at : at + draw(st.integers(1, 256))] * draw(st.integers(1, 8))
    if data.startswith(b"\x89PNG") and draw(st.booleans()):
        return fix_png_crcs(bytes(data))
    return bytes(data)


def test_mutated_images_never_get_a_5xx(client: TestClient, seeds: list[bytes]) -> None:
    statuses: dict[int, int] = {}

    @settings(
        max_examples=MUTATION_EXAMPLES,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.lists(mutated(seeds), min_size=1, max_size=3))
    def run(uploads: list[bytes]) -> None:
        files = [("file", (f"m{i}.img", data, "image/png")) for i, data in enumerate(uploads)]
        response = client.post("/predict", files=files)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code in (200, 400, 413, 415), response.text
        if response.status_code == 200:
            assert len(response.json()["predictions"]) == len(uploads)
        else:
            assert "file #" in response.json()["detail"]

    run()
    print(f"mutated uploads, answers by status: {statuses}")
    # the mutations exercise both answers, not only one of them
    assert statuses.get(200, 0) > 0, statuses
    assert statuses.get(400, 0) > 0, statuses
