"""The Open Inference Protocol (V2): tritonclient against a real server, parity with
``/predict`` and with plain PyTorch, and every error case in-process."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import struct
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import tritonclient.http as triton
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import load_file
from starlette.requests import Request
from tritonclient.utils import InferenceServerException

from app.config import Settings
from app.errors import install_handlers
from app.main import create_app
from app.oip.tensors import server_version
from tests.conftest import wait_until_ready
from tests.helpers import MODELS_DIR, Server, encode
from training.architectures import build_model
from training.loader import read_manifest
from training.preprocess import Preprocessor

MODEL = "mnist-lenet5"
INFER = f"/v2/models/{MODEL}/infer"
HEADER = "Inference-Header-Content-Length"


# --- helpers ---------------------------------------------------------------------------


def pngs(split: Any, n: int, start: int = 0) -> list[bytes]:
    return [encode(split.images[i, 0].numpy()) for i in range(start, start + n)]


def length_prefixed(elements: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def v2_request(
    inputs: list[dict[str, Any]],
    binaries: Sequence[bytes] = (),
    **fields: Any,
) -> tuple[bytes, dict[str, str]]:
    """A V2 body: the JSON with ``inputs`` and ``fields``, then ``binaries`` if any."""
    head = json.dumps({"inputs": inputs, **fields}).encode()
    if not binaries:
        return head, {"content-type": "application/json"}
    return head + b"".join(binaries), {HEADER: str(len(head))}


def image_input(elements: list[bytes]) -> tuple[dict[str, Any], bytes]:
    blob = length_prefixed(elements)
    tensor = {"name": "image", "datatype": "BYTES", "shape": [len(elements)],
              "parameters": {"binary_data_size": len(blob)}}  # fmt: skip
    return tensor, blob


def fp32_input(array: np.ndarray) -> tuple[dict[str, Any], bytes]:
    blob = array.astype("<f4").tobytes()
    tensor = {"name": "input", "datatype": "FP32", "shape": list(array.shape),
              "parameters": {"binary_data_size": len(blob)}}  # fmt: skip
    return tensor, blob


def result(response: httpx.Response) -> triton.InferResult:
    """A V2 response decoded by tritonclient's own parser."""
    assert response.status_code == 200, response.text
    length = response.headers.get(HEADER)
    return triton.InferResult.from_response_body(
        response.content, header_length=int(length) if length else None
    )


def predict_probs(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    preds = response.json()["predictions"]
    return np.array([list(p["probabilities"].values()) for p in preds], dtype=np.float64)


def plain_pytorch(name: str, inputs: np.ndarray) -> np.ndarray:
    """The model rebuilt from its manifest and state_dict, in eval(), its logits divided by
    the manifest's temperature (the served probabilities are calibrated): no serving code."""
    folder = MODELS_DIR / name
    manifest = read_manifest(folder)
    arch = manifest.architecture
    model = build_model(arch.name, arch.config, len(manifest.classes))
    model.load_state_dict(load_file(str(folder / manifest.weights.file)), strict=True)
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(inputs)) / manifest.calibration.temperature
        return torch.softmax(logits, 1).numpy()


def model_inputs(name: str, split: Any, n: int) -> np.ndarray:
    """Normalized ``(n, C, H, W)`` inputs, made by the model's own preprocessing."""
    spec = read_manifest(MODELS_DIR / name).input
    return Preprocessor(spec)(split.images[:n]).numpy().astype(np.float32)


# --- a real server, through tritonclient ------------------------------------------------


@pytest.fixture(scope="module")
def triton_client(server: Server) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    yield client
    client.close()


@pytest.mark.slow
def test_tritonclient_health_and_metadata(triton_client: triton.InferenceServerClient) -> None:
    assert triton_client.is_server_live()
    assert triton_client.is_server_ready()
    assert triton_client.is_model_ready(MODEL)
    assert triton_client.is_model_ready(MODEL, "1")
    assert not triton_client.is_model_ready(MODEL, "2")
    assert not triton_client.is_model_ready("no-such-model")
    server = triton_client.get_server_metadata()
    assert server["name"] == "mnist-serve"
    assert server["version"] == server_version()
    assert {"binary_tensor_data", "classification"} <= set(server["extensions"])
    for name in ("mnist-lenet5", "fashion-mlp"):
        spec = read_manifest(MODELS_DIR / name).input
        for meta in (triton_client.get_model_metadata(name),
                     triton_client.get_model_metadata(name, "1")):  # fmt: skip
            assert meta == {
                "name": name,
                "versions": ["1"],
                "platform": "pytorch",
                "inputs": [
                    {"name": "image", "datatype": "BYTES", "shape": [-1]},
                    {"name": "input", "datatype": "FP32",
                     "shape": [-1, spec.channels, spec.height, spec.width]},
                ],
                "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
            }  # fmt: skip


@pytest.mark.slow
def test_tritonclient_metadata_errors(triton_client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as err:
        triton_client.get_model_metadata("no-such-model")
    assert err.value.status() == "404"
    assert "unknown model 'no-such-model'" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        triton_client.get_model_metadata(MODEL, "7")
    assert err.value.status() == "404"
    assert "no version '7'" in err.value.message()


@pytest.mark.slow
def test_tritonclient_image_equals_predict(
    triton_client: triton.InferenceServerClient, server: Server, mnist_test: Any
) -> None:
    files = pngs(mnist_test, 8)
    image = triton.InferInput("image", [len(files)], "BYTES")
    image.set_data_from_numpy(np.array(files, dtype=np.object_), binary_data=True)
    got = triton_client.infer(MODEL, [image], request_id="r-1")
    assert got.get_response()["id"] == "r-1"
    assert got.get_response()["model_version"] == "1"
    probs = got.as_numpy("probabilities")
    assert probs.dtype == np.float32
    assert probs.shape == (8, 10)

    multipart = [("file", (f"{i}.png", f, "image/png")) for i, f in enumerate(files)]
    want = predict_probs(httpx.post(f"{server.url}/predict", files=multipart, timeout=30))
    np.testing.assert_allclose(probs, want, rtol=0, atol=1e-6)
    assert probs.argmax(1).tolist() == mnist_test.labels[:8].tolist()

    # The same request through the version route, with the three best classes.
    ranked = triton.InferRequestedOutput("probabilities", class_count=3)
    top = triton_client.infer(MODEL, [image], model_version="1", outputs=[ranked])
    labels = top.as_numpy("probabilities")
    assert labels.shape == (8, 3)
    for row, p in zip(labels, probs, strict=True):
        order = np.argsort(-p, kind="stable")[:3]
        parts = [e.decode().split(":") for e in row]
        assert [int(i) for _, i, _ in parts] == order.tolist()
        assert [lbl for _, _, lbl in parts] == [str(i) for i in order]
        assert [float(s) for s, _, _ in parts] == pytest.approx(p[order].tolist(), abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mnist-lenet5", "fashion-cnn"])
def test_tritonclient_input_binary_and_json_equal_plain_pytorch(
    triton_client: triton.InferenceServerClient, mnist_test: Any, name: str
) -> None:
    inputs = model_inputs(name, mnist_test, 5)
    want = plain_pytorch(name, inputs)
    answers = []
    for binary_in in (True, False):
        for binary_out in (True, False):
            tensor = triton.InferInput("input", list(inputs.shape), "FP32")
            tensor.set_data_from_numpy(inputs, binary_data=binary_in)
            output = triton.InferRequestedOutput("probabilities", binary_data=binary_out)
            got = triton_client.infer(name, [tensor], outputs=[output])
            answers.append(got.as_numpy("probabilities").reshape(5, 10))
    for probs in answers:
        np.testing.assert_allclose(probs, want, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(probs, answers[0])  # binary and JSON: the same numbers

    tensor = triton.InferInput("input", list(inputs.shape), "FP32")
    tensor.set_data_from_numpy(inputs, binary_data=False)
    for binary_out in (True, False):
        ranked = triton.InferRequestedOutput("probabilities", binary_out, class_count=2)
        labels = triton_client.infer(name, [tensor], outputs=[ranked]).as_numpy("probabilities")
        # tritonclient gives BYTES elements as bytes from binary data, as str from JSON.
        firsts = [e if isinstance(e, str) else e.decode() for e in labels.reshape(5, 2)[:, 0]]
        assert [int(e.split(":")[1]) for e in firsts] == want.argmax(1).tolist()


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_tritonclient_compressed_requests(
    triton_client: triton.InferenceServerClient, mnist_test: Any, algorithm: str
) -> None:
    files = pngs(mnist_test, 4)
    image = triton.InferInput("image", [4], "BYTES")
    image.set_data_from_numpy(np.array(files, dtype=np.object_))
    plain = triton_client.infer(MODEL, [image]).as_numpy("probabilities")
    packed = triton_client.infer(MODEL, [image], request_compression_algorithm=algorithm)
    np.testing.assert_array_equal(packed.as_numpy("probabilities"), plain)


@pytest.mark.slow
def test_tritonclient_infer_errors(
    triton_client: triton.InferenceServerClient, mnist_test: Any
) -> None:
    image = triton.InferInput("image", [2], "BYTES")
    image.set_data_from_numpy(np.array([b"not an image", pngs(mnist_test, 1)[0]], np.object_))
    with pytest.raises(InferenceServerException) as err:
        triton_client.infer(MODEL, [image])
    assert err.value.status() == "415"
    assert err.value.message().startswith("image[0]: ")
    with pytest.raises(InferenceServerException) as err:
        triton_client.infer("no-such-model", [image])
    assert err.value.status() == "404"
    wrong = triton.InferInput("input", [1, 1, 28, 28], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 1, 28, 28), np.float32))
    with pytest.raises(InferenceServerException) as err:
        triton_client.infer(MODEL, [wrong])
    assert err.value.status() == "400"
    assert "shape [1, 1, 28, 28]; this model takes [-1, 1, 32, 32]" in err.value.message()


# --- in-process: encodings and parameters ------------------------------------------------


def test_json_image_base64_equals_binary(client: TestClient, mnist_test: Any) -> None:
    files = pngs(mnist_test, 3)
    tensor, blob = image_input(files)
    body, headers = v2_request([tensor], [blob])
    binary = result(client.post(INFER, content=body, headers=headers)).as_numpy("probabilities")
    as_json = {"name": "image", "datatype": "BYTES", "shape": [3],
               "data": [base64.b64encode(f).decode() for f in files]}  # fmt: skip
    body, headers = v2_request([as_json])
    r = client.post(INFER, content=body, headers=headers)
    assert r.headers["content-type"] == "application/json"
    assert HEADER not in r.headers
    out = r.json()["outputs"][0]
    assert out["name"] == "probabilities"
    assert out["datatype"] == "FP32"
    assert out["shape"] == [3, 10]
    np.testing.assert_array_equal(np.array(out["data"], np.float32).reshape(3, 10), binary)


def test_binary_data_output_without_outputs(client: TestClient, mnist_test: Any) -> None:
    tensor, blob = image_input(pngs(mnist_test, 2))
    body, headers = v2_request([tensor], [blob], parameters={"binary_data_output": True})
    r = client.post(INFER, content=body, headers=headers)
    assert r.headers["content-type"] == "application/octet-stream"
    head = int(r.headers[HEADER])
    meta = json.loads(r.content[:head])
    assert meta == {"model_name": MODEL, "model_version": "1", "outputs": [
        {"name": "probabilities", "datatype": "FP32", "shape": [2, 10],
         "parameters": {"binary_data_size": 80}}]}  # fmt: skip
    probs = np.frombuffer(r.content[head:], "<f4").reshape(2, 10)
    assert probs.sum(1) == pytest.approx([1.0, 1.0], abs=1e-5)


def test_classification_in_binary_is_length_prefixed(client: TestClient, mnist_test: Any) -> None:
    tensor, blob = image_input(pngs(mnist_test, 1))
    ask = [{"name": "probabilities", "parameters": {"classification": 20, "binary_data": True}}]
    body, headers = v2_request([tensor], [blob], outputs=ask, id="abc")
    r = client.post(f"/v2/models/{MODEL}/versions/1/infer", content=body, headers=headers)
    head = int(r.headers[HEADER])
    meta = json.loads(r.content[:head])
    assert meta["id"] == "abc"
    assert meta["outputs"][0]["datatype"] == "BYTES"
    assert meta["outputs"][0]["shape"] == [1, 10]  # K past the class count: every class
    raw, labels = r.content[head:], []
    while raw:
        (n,) = struct.unpack_from("<I", raw)
        labels.append(raw[4 : 4 + n].decode())
        raw = raw[4 + n :]
    assert len(labels) == 10
    scores = [float(label.split(":")[0]) for label in labels]
    assert scores == sorted(scores, reverse=True)
    assert labels[0].endswith(f":{int(mnist_test.labels[0])}:{int(mnist_test.labels[0])}")


@pytest.mark.parametrize("mode", ["auto", "dataset", "none"])
def test_preprocess_parameter_as_on_predict(client: TestClient, mnist_test: Any, mode: str) -> None:
    # An upscaled, inverted digit: the modes give different inputs.
    digit = 255 - mnist_test.images[3, 0].numpy()
    big = encode(Image.fromarray(digit).resize((84, 84)))
    tensor, blob = image_input([big])
    body, headers = v2_request([tensor], [blob], parameters={"preprocess": mode})
    got = result(client.post(INFER, content=body, headers=headers)).as_numpy("probabilities")
    want = predict_probs(client.post(f"/predict?preprocess={mode}", files={"file": big}))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_predict_and_v2_share_the_limits_of_a_full_request(
    client: TestClient, mnist_test: Any
) -> None:
    tensor, blob = image_input(pngs(mnist_test, 64))
    body, headers = v2_request([tensor], [blob])
    probs = result(client.post(INFER, content=body, headers=headers)).as_numpy("probabilities")
    assert probs.argmax(1).tolist() == mnist_test.labels[:64].tolist()


# --- in-process: every error, on status and body ------------------------------------------


def _png() -> bytes:
    return encode(np.zeros((28, 28), np.uint8))


def _bytes_tensor(shape: list[int], size: int) -> dict[str, Any]:
    return {"name": "image", "datatype": "BYTES", "shape": shape,
            "parameters": {"binary_data_size": size}}  # fmt: skip


def _fp32(shape: list[int], data: Any) -> dict[str, Any]:
    return {"name": "input", "datatype": "FP32", "shape": shape, "data": data}


ONE = length_prefixed([_png()])
ZEROS = [0.0] * 1024

# (id, body, extra headers, status, start of the error message)
ERRORS: list[tuple[str, bytes, dict[str, str], int, str]] = [
    ("malformed JSON", b'{"inputs": [', {}, 400, "Invalid JSON"),
    ("not an object", b"[1, 2]", {}, 400, "Input should be an object"),
    ("not UTF-8", b'{"inputs": "\xff"}', {}, 400, "Invalid JSON"),
    ("no inputs field", b"{}", {}, 400, "inputs: Field required"),
    ("no input", *v2_request([]), 400, "no input: give 'image' (BYTES) or 'input' (FP32)"),
    ("unknown input", *v2_request([{**_fp32([1], [0.0]), "name": "pixels"}]), 400,
     "unknown input 'pixels'"),
    ("both inputs", *v2_request([_fp32([1, 1, 32, 32], ZEROS), _bytes_tensor([1], len(ONE))],
                                [ONE]), 400, "one input per request"),
    ("input twice", *v2_request([_fp32([1, 1, 32, 32], ZEROS)] * 2), 400,
     "one input per request"),
    ("image not BYTES", *v2_request([{**_bytes_tensor([1], len(ONE)), "datatype": "UINT8"}],
                                    [ONE]), 400, "input 'image' must be BYTES, not 'UINT8'"),
    ("input not FP32", *v2_request([{**_fp32([1, 1, 32, 32], ZEROS), "datatype": "FP64"}]), 400,
     "input 'input' must be FP32, not 'FP64'"),
    ("image shape", *v2_request([_bytes_tensor([1, 1], len(ONE))], [ONE]), 400,
     "input 'image' has shape [1, 1]; this model takes [-1]"),
    ("input shape", *v2_request([_fp32([1, 1, 28, 28], [0.0] * 784)]), 400,
     "input 'input' has shape [1, 1, 28, 28]; this model takes [-1, 1, 32, 32]"),
    ("shape not integers", *v2_request([_fp32([1.5, 1, 32, 32], ZEROS)]), 400,
     "inputs[0].shape[0]: Input should be a valid integer"),
    ("empty batch", *v2_request([_bytes_tensor([0], 0)], [b""]), 400,
     "input 'image' holds no image"),
    ("JSON count", *v2_request([_fp32([2, 1, 32, 32], ZEROS)]), 400,
     "input 'input' holds 1,024 elements; FP32 [2, 1, 32, 32] is 2,048"),
    ("binary FP32 count", *v2_request([{**_bytes_tensor([1, 1, 32, 32], 4000),
                                        "name": "input", "datatype": "FP32"}], [b"\0" * 4000]),
     400, "input 'input': 4,000 bytes of binary data; FP32 [1, 1, 32, 32] is 4,096"),
    ("BYTES count", *v2_request([_bytes_tensor([2], len(ONE))], [ONE]), 400,
     "input 'image' holds 1 elements; its shape says 2"),
    ("BYTES extra", *v2_request([_bytes_tensor([1], 2 * len(ONE))], [ONE + ONE]), 400,
     f"input 'image': {len(ONE)} bytes after its 1 elements' binary data"),
    ("BYTES length past end", *v2_request([_bytes_tensor([1], 8)], [b"\xff\0\0\0abcd"]), 400,
     "input 'image': element 0 says 255 bytes, 4 are left"),
    ("BYTES cut length", *v2_request([_bytes_tensor([1], 2)], [b"\1\0"]), 400,
     "input 'image': binary data ends inside an element's length"),
    ("binary size without header", v2_request([_bytes_tensor([1], len(ONE))])[0], {}, 400,
     "input 'image' has binary_data_size, but the request has no"),
    ("header past the body", b"{}", {HEADER: "3"}, 400,
     "Inference-Header-Content-Length is 3; the body holds 2 bytes"),
    ("header not a number", b"{}", {HEADER: "two"}, 400,
     "Inference-Header-Content-Length must be a number of bytes"),
    ("bytes after the data", *v2_request([_bytes_tensor([1], len(ONE))], [ONE + b"xx"]), 400,
     "2 bytes after the JSON and the inputs' binary data"),
    ("binary size past the end", *v2_request([_bytes_tensor([1], len(ONE) + 5)], [ONE]), 400,
     f"input 'image': binary_data_size {len(ONE) + 5} runs past the end of the body"),
    ("data and binary size", *v2_request([{**_bytes_tensor([1], len(ONE)), "data": ["x"]}],
                                         [ONE]), 400,
     "input 'image' has both data and binary_data_size"),
    ("no data", *v2_request([{"name": "input", "datatype": "FP32", "shape": [1, 1, 32, 32]}]),
     400, "input 'input' has no data and no binary_data_size"),
    ("negative binary size", *v2_request([_bytes_tensor([1], -1)], [ONE]), 400,
     "inputs[0].parameters.binary_data_size: Input should be greater than or equal to 0"),
    ("JSON image not base64", *v2_request([{"name": "image", "datatype": "BYTES", "shape": [1],
                                            "data": ["%%%"]}]), 400,
     "input 'image': element 0 is not valid base64"),
    ("JSON image not a string", *v2_request([{"name": "image", "datatype": "BYTES",
                                              "shape": [1], "data": [7]}]), 400,
     "input 'image': element 0 must be a base64 string in JSON"),
    ("undecodable image", *v2_request([_bytes_tensor([1], 20)],
                                      [length_prefixed([b"\x89PNG\r\n\x1a\n" + b"\0" * 8])]),
     400, "image[0]: "),
    ("not an image", *v2_request([_bytes_tensor([1], 12)], [length_prefixed([b"%PDF-1"+b"\0"*2])]),
     415, "image[0]: "),
    ("empty image", *v2_request([_bytes_tensor([1], 4)], [length_prefixed([b""])]), 400,
     "image[0]: empty file"),
    ("NaN input", *v2_request([{**_bytes_tensor([1, 1, 32, 32], 4096), "name": "input",
                                "datatype": "FP32"}],
                              [np.full(1024, np.nan, "<f4").tobytes()]), 400,
     "input 'input' holds NaN or infinite values"),
    ("FP32 strings", *v2_request([_fp32([1, 1, 32, 32], ["0.5"] * 1024)]), 400,
     "input 'input': FP32 data must be numbers"),
    ("FP32 booleans", *v2_request([_fp32([1, 1, 32, 32], [True] * 1024)]), 400,
     "input 'input': FP32 data must be numbers"),
    ("FP32 ragged", *v2_request([_fp32([1, 1, 32, 32], [[0.0] * 1000, [0.0] * 24])]), 400,
     "input 'input': data is not an array of numbers"),
    ("FP32 huge", *v2_request([_fp32([1, 1, 32, 32], [1e300] * 1024)]), 400,
     "input 'input' holds NaN or infinite values"),
    ("unknown output", *v2_request([_fp32([1, 1, 32, 32], ZEROS)], outputs=[{"name": "logits"}]),
     400, "unknown output 'logits': this model gives 'probabilities'"),
    ("output twice", *v2_request([_fp32([1, 1, 32, 32], ZEROS)],
                                 outputs=[{"name": "probabilities"}] * 2), 400,
     "output 'probabilities' is requested more than once"),
    ("negative classification", *v2_request(
        [_fp32([1, 1, 32, 32], ZEROS)],
        outputs=[{"name": "probabilities", "parameters": {"classification": -1}}]), 400,
     "outputs[0].parameters.classification: Input should be greater than or equal to 0"),
    ("binary_data not a bool", *v2_request(
        [_fp32([1, 1, 32, 32], ZEROS)],
        outputs=[{"name": "probabilities", "parameters": {"binary_data": "yes"}}]), 400,
     "outputs[0].parameters.binary_data: Input should be a valid boolean"),
    ("bad preprocess", *v2_request([_fp32([1, 1, 32, 32], ZEROS)],
                                   parameters={"preprocess": "magic"}), 400,
     "parameters.preprocess: Input should be 'auto', 'dataset' or 'none'"),
    ("id not a string", *v2_request([_fp32([1, 1, 32, 32], ZEROS)], id=5), 400,
     "id: Input should be a valid string"),
    ("shared memory", *v2_request([{**_fp32([1, 1, 32, 32], ZEROS),
                                    "parameters": {"shared_memory_region": "r"}}]), 400,
     "input 'input': shared memory is not supported"),
    ("too many images", *v2_request([_bytes_tensor([65], 65 * len(ONE))], [ONE * 65]), 413,
     "too many images: at most 64 per request"),
    ("too many model inputs", *v2_request([_fp32([65, 1, 32, 32], [])]), 413,
     "too many images: at most 64 per request"),
    ("unknown encoding", b"{}", {"content-encoding": "br"}, 415,
     "Content-Encoding 'br' is not accepted"),
    ("corrupt gzip", gzip.compress(b"")[:10] + b"\xff" * 20, {"content-encoding": "gzip"}, 400,
     "corrupt gzip request body"),
    ("truncated gzip", gzip.compress(b'{"inputs": []}')[:-12], {"content-encoding": "gzip"},
     400, "truncated gzip request body"),
    ("gzip then garbage", gzip.compress(b"{}") + b"junk", {"content-encoding": "gzip"}, 400,
     "data after the end of the gzip request body"),
    ("gzip bomb", gzip.compress(b" " * (11 << 20)), {"content-encoding": "gzip"}, 413,
     "request body is over the limit of 10,485,760 bytes once decompressed"),
    ("deflate bomb", zlib.compress(b" " * (11 << 20)), {"content-encoding": "deflate"}, 413,
     "request body is over the limit of 10,485,760 bytes once decompressed"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [pytest.param(*case[1:], id=case[0]) for case in ERRORS],
)
def test_infer_errors(
    client: TestClient, body: bytes, headers: dict[str, str], status: int, message: str
) -> None:
    r = client.post(INFER, content=body, headers=headers)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"error": r.json()["error"], "request_id": r.headers["x-request-id"]}
    assert r.json()["error"].startswith(message), r.json()


def test_errors_of_a_failed_request_leave_the_batch_served(
    client: TestClient, mnist_test: Any
) -> None:
    """A bad element fails its own request only, V2 or /predict, in any order."""
    tensor, blob = image_input([*pngs(mnist_test, 2), b"broken"])
    body, headers = v2_request([tensor], [blob])
    assert client.post(INFER, content=body, headers=headers).status_code == 415
    tensor, blob = image_input(pngs(mnist_test, 2))
    body, headers = v2_request([tensor], [blob])
    assert client.post(INFER, content=body, headers=headers).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        ("POST", "/v2/models/no-such-model/infer", 404, "unknown model 'no-such-model'"),
        ("POST", f"/v2/models/{MODEL}/versions/2/infer", 404, "model 'mnist-lenet5' has no"),
        ("GET", "/v2/models/no-such-model", 404, "unknown model 'no-such-model'"),
        ("GET", f"/v2/models/{MODEL}/versions/0", 404, f"model '{MODEL}' has no version '0'"),
        ("GET", "/v2/models/no-such-model/ready", 404, "unknown model"),
        ("GET", f"/v2/models/{MODEL}/versions/2/ready", 404, f"model '{MODEL}' has no version"),
        ("GET", f"/v2/models/{MODEL}/stats", 404, "Not Found"),
        ("GET", INFER, 405, "Method Not Allowed"),
        ("DELETE", "/v2", 405, "Method Not Allowed"),
    ],
)  # fmt: skip
def test_route_errors(
    client: TestClient, method: str, path: str, status: int, message: str
) -> None:
    r = client.request(method, path, content=b"{}")
    assert r.status_code == status
    assert r.json() == {"error": r.json()["error"], "request_id": r.headers["x-request-id"]}
    assert r.json()["error"].startswith(message)


def test_the_body_limit_holds_streamed_and_declared(client: TestClient) -> None:
    too_big = b" " * ((10 << 20) + 1)
    declared = client.post(INFER, content=too_big)
    assert declared.status_code == 413
    assert declared.json()["error"] == "request body is over the limit of 10,485,760 bytes"

    def chunks() -> Iterator[bytes]:
        for _ in range(11):
            yield b" " * (1 << 20)

    streamed = client.post(INFER, content=chunks())
    assert streamed.status_code == 413
    assert streamed.json()["error"] == declared.json()["error"]
    assert client.post("/predict", content=too_big).json()["detail"] == declared.json()["error"]


def test_the_pixel_limit_holds_before_decoding(client: TestClient) -> None:
    huge = encode(Image.new("L", (5001, 5000)))  # 25,005,000 pixels, a few KB of PNG
    tensor, blob = image_input([huge])
    body, headers = v2_request([tensor], [blob])
    r = client.post(INFER, content=body, headers=headers)
    assert r.status_code == 413
    assert r.json()["error"].startswith("image[0]: ")
    assert "25,000,000" in r.json()["error"]


def test_validation_errors_on_v2_routes_are_400_in_the_v2_shape() -> None:
    """No V2 route declares a parameter FastAPI could refuse; the handler is ready anyway."""
    app = FastAPI()
    install_handlers(app)
    handler = app.exception_handlers[RequestValidationError]
    error = RequestValidationError([{"loc": ("query", "n"), "msg": "bad n", "type": "x"}])

    def request(path: str) -> Request:
        return Request({"type": "http", "method": "GET", "path": path, "headers": [],
                        "query_string": b""})  # fmt: skip

    v2 = asyncio.run(handler(request("/v2/models/m/infer"), error))
    assert v2.status_code == 400
    assert json.loads(v2.body) == {"error": "query.n: bad n"}
    other = asyncio.run(handler(request("/predict"), error))
    assert other.status_code == 422
    assert "detail" in json.loads(other.body)


# --- the API key ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_client() -> Iterator[TestClient]:
    settings = Settings(models_dir=MODELS_DIR, device="cpu", torch_threads=1, models=[MODEL],
                        default_model=MODEL, api_key="sesame")  # fmt: skip
    with TestClient(create_app(settings)) as c:
        wait_until_ready(c)
        yield c


def test_model_routes_take_the_api_key(keyed_client: TestClient, mnist_test: Any) -> None:
    tensor, blob = image_input(pngs(mnist_test, 1))
    body, headers = v2_request([tensor], [blob])
    for method, path in [("GET", f"/v2/models/{MODEL}"), ("GET", f"/v2/models/{MODEL}/ready"),
                         ("POST", INFER)]:  # fmt: skip
        denied = keyed_client.request(method, path, content=body, headers=headers)
        assert denied.status_code == 401
        rid = denied.headers["x-request-id"]
        assert denied.json() == {"error": "missing or invalid API key", "request_id": rid}
        assert denied.headers["www-authenticate"] == "Bearer"
        allowed = keyed_client.request(
            method, path, content=body, headers={**headers, "authorization": "Bearer sesame"}
        )
        assert allowed.status_code == 200
    for open_path in ("/v2", "/v2/health/live", "/v2/health/ready"):
        assert keyed_client.get(open_path).status_code == 200
