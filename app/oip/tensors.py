"""The Open Inference Protocol's tensors for one model, whatever carries them.

Every model declares the same tensors, at its own sizes (clients and tests rely on the names):

- input ``image``: ``BYTES``, shape ``[-1]``, each element an encoded image file, taken
  exactly as ``/predict`` takes an upload (:meth:`Pipeline.prepare`: same formats, limits
  and ``preprocess`` modes);
- input ``input``: ``FP32``, shape ``[-1, C, H, W]`` at the model's input size, already
  normalized with the manifest's mean and std: the pipeline passes these rows through as
  they are (:meth:`Pipeline.transform`);
- output ``probabilities``: ``FP32``, shape ``[-1, classes]``; with the classification
  extension, ``BYTES`` ``[N, K]`` of ``"score:index:label"``, best first.

A request gives one of the two inputs. A transport (app/oip/rest.py) decodes its body into
an :class:`InferRequest`; :func:`plan` checks it against the model and returns the work for
the model's batch engine: ``prepare`` turns the tensor's elements into the pipeline's
arrays on the batch worker, ``outputs`` turns the request's rows of probabilities into
:class:`OutputTensor` objects for the transport to encode.

The binary layout of elements (:func:`split_bytes`, :func:`to_raw`) is the protocol's, shared
by REST's binary tensor extension and gRPC's raw contents: numbers little-endian, each
``BYTES`` element a 4-byte little-endian length and its bytes.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache, partial
from importlib import metadata
from typing import Any

import numpy as np
import torch

from app.errors import InvalidInput, ModelNotFound, PayloadTooLarge
from app.pipeline import Pipeline, Upload
from training.normalize import Mode

SERVER_NAME = "mnist-serve"
EXTENSIONS = ("binary_tensor_data", "classification")
# The manifest has no version field: a retrained model is a new model folder, so each
# loaded model is served as its one version, "1".
VERSION = "1"
PLATFORM = "pytorch"

IMAGE, INPUT, PROBABILITIES = "image", "input", "probabilities"
_INPUTS = f"{IMAGE!r} (BYTES) or {INPUT!r} (FP32)"

_LENGTH = struct.Struct("<I")  # a BYTES element's length prefix


@cache
def server_version() -> str:
    try:
        return metadata.version(SERVER_NAME)
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "0+unknown"


# --- what a transport hands in and gets back -------------------------------------------


@dataclass(frozen=True)
class Tensor:
    """An input tensor as a transport decoded it: its elements either still in the binary
    layout (``raw``) or as the values of a JSON array, possibly nested (``values``)."""

    name: str
    datatype: str
    shape: list[int]
    raw: bytes | memoryview | None = None
    values: list[Any] | None = None


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    classification: int = 0  # K > 0: the K best classes as BYTES instead of the tensor


@dataclass(frozen=True)
class InferRequest:
    inputs: list[Tensor]
    outputs: list[RequestedOutput] = field(default_factory=list)  # empty: every output
    preprocess: Mode = "auto"  # for ``image`` inputs, as /predict's query parameter
    id: str | None = None


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray | list[bytes]  # FP32: the array; BYTES: the elements in row-major order


@dataclass(frozen=True)
class Work:
    """A request checked against its model, in the terms of ``BatchEngine.submit``."""

    size: int  # images
    prepare: Callable[[], list[np.ndarray]]
    outputs: Callable[[torch.Tensor], list[OutputTensor]]


# --- the model's tensors ---------------------------------------------------------------


def input_shape(pipeline: Pipeline) -> list[int]:
    spec = pipeline.loaded.manifest.input
    return [-1, spec.channels, spec.height, spec.width]


def model_metadata(pipeline: Pipeline) -> dict[str, Any]:
    """The model's metadata: its name, versions, platform and tensors."""
    return {
        "name": pipeline.name,
        "versions": [VERSION],
        "platform": PLATFORM,
        "inputs": [
            {"name": IMAGE, "datatype": "BYTES", "shape": [-1]},
            {"name": INPUT, "datatype": "FP32", "shape": input_shape(pipeline)},
        ],
        "outputs": [
            {"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, len(pipeline.classes)]}
        ],
    }


def check_version(model: str, version: str | None) -> None:
    """404 for any version but the model's one (``None``: the route names none)."""
    if version is not None and version != VERSION:
        raise ModelNotFound(
            f"model {model!r} has no version {version[:40]!r} (versions: {VERSION})"
        )


def plan(pipeline: Pipeline, request: InferRequest, max_images: int) -> Work:
    """Check ``request`` against the model's tensors; 400 for what does not fit, 413 for
    more than ``max_images`` images. The elements themselves are checked by ``prepare``."""
    tensor = _one_input(request.inputs)
    outputs = _requested(request.outputs)
    if tensor.name == IMAGE:
        n = _images(tensor, "BYTES", [-1], max_images)
        prepare = partial(_prepare_images, pipeline, tensor, n, request.preprocess)
    else:
        shape = input_shape(pipeline)
        n = _images(tensor, "FP32", shape, max_images)
        prepare = partial(_prepare_inputs, tensor, [n, *shape[1:]])
    return Work(n, prepare, partial(_outputs, pipeline.classes, outputs))


def _one_input(inputs: Sequence[Tensor]) -> Tensor:
    if not inputs:
        raise InvalidInput(f"no input: give {_INPUTS}")
    for tensor in inputs:
        if tensor.name not in (IMAGE, INPUT):
            raise InvalidInput(f"unknown input {tensor.name[:40]!r}: this model takes {_INPUTS}")
    if len(inputs) > 1:
        names = ", ".join(repr(t.name) for t in inputs)
        raise InvalidInput(f"one input per request, {_INPUTS}; got {names}")
    return inputs[0]


def _requested(outputs: Sequence[RequestedOutput]) -> list[RequestedOutput]:
    if not outputs:
        return [RequestedOutput(PROBABILITIES)]
    for output in outputs:
        if output.name != PROBABILITIES:
            raise InvalidInput(
                f"unknown output {output.name[:40]!r}: this model gives {PROBABILITIES!r}"
            )
        if output.classification < 0:
            raise InvalidInput(f"output {output.name!r}: classification must be >= 1")
    if len(outputs) > 1:
        raise InvalidInput(f"output {PROBABILITIES!r} is requested more than once")
    return list(outputs)


def _show(shape: Sequence[int]) -> str:
    return str(list(shape)) if len(shape) <= 8 else f"[{len(shape)} dimensions]"


def _images(tensor: Tensor, datatype: str, shape: list[int], max_images: int) -> int:
    """The tensor's first dimension, once its datatype and other dimensions fit."""
    name = tensor.name
    if tensor.datatype != datatype:
        raise InvalidInput(f"input {name!r} must be {datatype}, not {tensor.datatype[:20]!r}")
    given = tensor.shape
    if len(given) != len(shape) or given[1:] != shape[1:]:
        raise InvalidInput(
            f"input {name!r} has shape {_show(given)}; this model takes {_show(shape)}"
        )
    n = given[0]
    if n < 1:
        raise InvalidInput(f"input {name!r} holds no image (shape {_show(given)})")
    if n > max_images:
        raise PayloadTooLarge(f"too many images: at most {max_images} per request")
    return n


# --- prepare: elements -> the pipeline's arrays (on the batch worker) -------------------


def split_bytes(raw: bytes | memoryview, count: int, name: str) -> list[bytes]:
    """``count`` BYTES elements from the binary layout; 400 unless exactly that many fill it."""
    view = memoryview(raw)
    size, at = len(view), 0
    elements: list[bytes] = []
    while at < size:
        if len(elements) == count:
            raise InvalidInput(
                f"input {name!r}: {size - at} bytes after its {count} elements' binary data"
            )
        if at + 4 > size:
            raise InvalidInput(f"input {name!r}: binary data ends inside an element's length")
        (length,) = _LENGTH.unpack_from(view, at)
        at += 4
        if at + length > size:
            raise InvalidInput(
                f"input {name!r}: element {len(elements)} says {length:,} bytes, "
                f"{size - at:,} are left"
            )
        elements.append(bytes(view[at : at + length]))
        at += length
    if len(elements) != count:
        raise InvalidInput(f"input {name!r} holds {len(elements)} elements; its shape says {count}")
    return elements


def _base64_elements(values: list[Any], count: int, name: str) -> list[bytes]:
    # An encoded image is not text: in JSON each element is its bytes in base64, as KServe's
    # image examples send them.
    if len(values) != count:
        raise InvalidInput(f"input {name!r} holds {len(values)} elements; its shape says {count}")
    elements = []
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise InvalidInput(f"input {name!r}: element {i} must be a base64 string in JSON")
        try:
            elements.append(base64.b64decode(value, validate=True))
        except binascii.Error:
            raise InvalidInput(f"input {name!r}: element {i} is not valid base64") from None
    return elements


def _prepare_images(pipeline: Pipeline, tensor: Tensor, n: int, mode: Mode) -> list[np.ndarray]:
    if tensor.raw is not None:
        elements = split_bytes(tensor.raw, n, tensor.name)
    else:
        elements = _base64_elements(tensor.values or [], n, tensor.name)
    uploads: list[Upload] = [(f"{tensor.name}[{i}]", data) for i, data in enumerate(elements)]
    return pipeline.prepare(uploads, mode)


def _prepare_inputs(tensor: Tensor, shape: list[int]) -> list[np.ndarray]:
    name, count = tensor.name, math.prod(shape)
    if tensor.raw is not None:
        if len(tensor.raw) != count * 4:
            raise InvalidInput(
                f"input {name!r}: {len(tensor.raw):,} bytes of binary data; "
                f"FP32 {_show(shape)} is {count * 4:,}"
            )
        array = np.frombuffer(tensor.raw, dtype="<f4")
    else:
        try:  # nested in row-major order, or flat
            array = np.asarray(tensor.values)
        except (ValueError, TypeError, OverflowError):
            raise InvalidInput(f"input {name!r}: data is not an array of numbers") from None
        if array.dtype.kind not in "iuf":
            raise InvalidInput(f"input {name!r}: FP32 data must be numbers")
        if array.size != count:
            raise InvalidInput(
                f"input {name!r} holds {array.size:,} elements; FP32 {_show(shape)} is {count:,}"
            )
    with np.errstate(over="ignore"):  # past FP32's range is infinite, refused below
        array = array.astype(np.float32, copy=False).reshape(shape)
    if not np.isfinite(array).all():
        raise InvalidInput(f"input {name!r} holds NaN or infinite values")
    return list(array)


# --- outputs: probabilities -> tensors (on the batch worker) -----------------------------


def _outputs(
    classes: list[str], requested: list[RequestedOutput], probabilities: torch.Tensor
) -> list[OutputTensor]:
    probs = probabilities.numpy()
    n = len(probs)
    tensors = []
    for output in requested:
        if not output.classification:
            tensors.append(OutputTensor(output.name, "FP32", [n, len(classes)], probs))
            continue
        k = min(output.classification, len(classes))
        # A stable sort keeps equal scores in class order, as /predict's top_k does.
        best = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        # "%f" is Triton's formatting of the score (std::to_string).
        labels = [
            f"{float(probs[i, j]):f}:{j}:{classes[j]}".encode()
            for i, row in enumerate(best.tolist())
            for j in row
        ]
        tensors.append(OutputTensor(output.name, "BYTES", [n, k], labels))
    return tensors


def to_raw(tensor: OutputTensor) -> bytes:
    """The tensor's elements in the binary layout."""
    if isinstance(tensor.data, np.ndarray):
        return np.ascontiguousarray(tensor.data, dtype="<f4").tobytes()
    return b"".join(_LENGTH.pack(len(e)) + e for e in tensor.data)


def to_values(tensor: OutputTensor) -> list[Any]:
    """The tensor's elements as a flat JSON array (BYTES as UTF-8 strings)."""
    if isinstance(tensor.data, np.ndarray):
        return tensor.data.ravel().tolist()
    return [e.decode("utf-8") for e in tensor.data]
