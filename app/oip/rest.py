"""The Open Inference Protocol over HTTP/REST: JSON bodies and the binary tensor extension.

A request body is a JSON object, or with the ``Inference-Header-Content-Length`` header
that many bytes of JSON followed by the binary data of the inputs that give a
``binary_data_size``, in the order of the inputs. A response puts each output whose
``binary_data`` parameter (default: the request's ``binary_data_output``) is true after
its JSON the same way, and says so in its own ``Inference-Header-Content-Length``. Bodies
may come compressed (``Content-Encoding: gzip`` or ``deflate``, as tritonclient sends
them); the decompressed size is bounded like the body's.

The JSON shapes are the pydantic models below, which also document the routes.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError
from pydantic_core import to_json

from app.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from app.oip.tensors import (
    VERSION,
    InferRequest,
    OutputTensor,
    RequestedOutput,
    Tensor,
    to_raw,
    to_values,
)
from training.normalize import Mode

HEADER_LENGTH = "Inference-Header-Content-Length"

Size = Annotated[StrictInt, Field(ge=0)]

# --- request ---------------------------------------------------------------------------


class _Parameters(BaseModel):
    # Any other parameter is accepted and ignored, as the protocol allows.
    model_config = ConfigDict(extra="allow")


class InputParameters(_Parameters):
    binary_data_size: Size | None = Field(
        None, description="Bytes of this input's data after the JSON (binary extension)"
    )


class OutputParameters(_Parameters):
    binary_data: StrictBool | None = Field(
        None, description="Send this output after the JSON; default: binary_data_output"
    )
    classification: Size = Field(
        0, description="K > 0: the K best classes as BYTES 'score:index:label', best first"
    )


class RequestParameters(_Parameters):
    binary_data_output: StrictBool = Field(
        False, description="Send every output after the JSON unless it says otherwise"
    )
    preprocess: Mode = Field(
        "auto", description="For 'image' inputs, as /predict's query parameter of that name"
    )


class InputTensor(BaseModel):
    name: str = Field(description="'image' (BYTES) or 'input' (FP32)")
    shape: list[StrictInt]
    datatype: str
    parameters: InputParameters = Field(default_factory=InputParameters)
    data: list[Any] | None = Field(
        None,
        description="Row-major, flat or nested; 'image' elements are base64 strings. "
        "Absent when the data is binary.",
    )


class RequestOutput(BaseModel):
    name: str = Field(description="'probabilities'")
    parameters: OutputParameters = Field(default_factory=OutputParameters)


class InferRequestBody(BaseModel):
    """An inference request (its JSON part, with the binary tensor extension)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{
                "id": "42",
                "inputs": [{"name": "input", "shape": [1, 1, 2, 2], "datatype": "FP32",
                            "data": [-0.42, 2.8, 2.8, -0.42]}],
                "outputs": [{"name": "probabilities", "parameters": {"classification": 3}}],
            }]
        }
    )  # fmt: skip

    id: str | None = Field(None, description="Echoed in the response")
    parameters: RequestParameters = Field(default_factory=RequestParameters)
    inputs: list[InputTensor]
    outputs: list[RequestOutput] | None = Field(None, description="Default: every output")


# --- responses (documentation; the infer response is built as plain JSON) ---------------


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ModelReady(BaseModel):
    name: str
    ready: bool


class OutputTensorBody(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = Field(None, description="binary_data_size if binary")
    data: list[Any] | None = None


class InferResponseBody(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[OutputTensorBody]


class V2Error(BaseModel):
    error: str


# --- decoding --------------------------------------------------------------------------


@dataclass(frozen=True)
class RestRequest:
    request: InferRequest
    binary: Callable[[str], bool]  # whether an output goes after the JSON, by name


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def _shared_memory(parameters: _Parameters, what: str) -> None:
    if any(k.startswith("shared_memory") for k in parameters.model_extra or {}):
        raise InvalidInput(f"{what}: shared memory is not supported; send the data in the body")


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """``body`` decoded by its ``Content-Encoding``: 413 once it outgrows ``limit``."""
    coding = encoding.strip().lower()
    if coding in ("", "identity"):
        return body
    if coding in ("gzip", "x-gzip"):
        wbits = 31
    elif coding == "deflate":
        # RFC 9110's deflate is the zlib format (tritonclient's); some clients send the raw
        # stream: a zlib header is 8 (deflate) in the low bits and a multiple of 31.
        zlib_header = len(body) >= 2 and body[0] & 0x0F == 8 and (body[0] << 8 | body[1]) % 31 == 0
        wbits = 15 if zlib_header else -15
    else:
        raise UnsupportedMediaType(
            f"Content-Encoding {coding[:40]!r} is not accepted: use gzip, deflate or none"
        )
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"corrupt {coding} request body: {exc}") from None
    if len(out) > limit:
        raise PayloadTooLarge(
            f"request body is over the limit of {limit:,} bytes once decompressed"
        )
    if not inflater.eof:
        raise InvalidInput(f"truncated {coding} request body")
    if inflater.unused_data:
        raise InvalidInput(f"data after the end of the {coding} request body")
    return out


def parse(body: bytes, header_length: str | None) -> RestRequest:
    """A (decompressed) request body and its ``Inference-Header-Content-Length``; 400 for
    malformed JSON or binary framing."""
    binary = memoryview(b"")
    header: bytes = body
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise InvalidInput(f"{HEADER_LENGTH} must be a number of bytes") from None
        if not 0 < n <= len(body):
            raise InvalidInput(f"{HEADER_LENGTH} is {n}; the body holds {len(body):,} bytes")
        header, binary = body[:n], memoryview(body)[n:]
    try:
        parsed = InferRequestBody.model_validate_json(header)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = _where(first["loc"])
        raise InvalidInput(f"{where + ': ' if where else ''}{first['msg']}") from None

    inputs, at = [], 0
    for tensor in parsed.inputs:
        name, size = tensor.name[:40], tensor.parameters.binary_data_size
        _shared_memory(tensor.parameters, f"input {name!r}")
        if size is None:
            if tensor.data is None:
                raise InvalidInput(f"input {name!r} has no data and no binary_data_size")
            inputs.append(Tensor(tensor.name, tensor.datatype, tensor.shape, values=tensor.data))
            continue
        if header_length is None:
            raise InvalidInput(
                f"input {name!r} has binary_data_size, but the request has no {HEADER_LENGTH}"
            )
        if tensor.data is not None:
            raise InvalidInput(f"input {name!r} has both data and binary_data_size")
        if at + size > len(binary):
            raise InvalidInput(
                f"input {name!r}: binary_data_size {size:,} runs past the end of the body "
                f"({len(binary) - at:,} bytes left)"
            )
        inputs.append(
            Tensor(tensor.name, tensor.datatype, tensor.shape, raw=binary[at : at + size])
        )
        at += size
    if at != len(binary):
        raise InvalidInput(
            f"{len(binary) - at:,} bytes after the JSON and the inputs' binary data "
            f"(their binary_data_size adds up to {at:,})"
        )

    outputs, binary_of = [], {}
    for output in parsed.outputs or ():
        _shared_memory(output.parameters, f"output {output.name[:40]!r}")
        outputs.append(RequestedOutput(output.name, output.parameters.classification))
        if output.parameters.binary_data is not None:
            binary_of[output.name] = output.parameters.binary_data
    default = parsed.parameters.binary_data_output
    request = InferRequest(inputs, outputs, parsed.parameters.preprocess, parsed.id)
    return RestRequest(request, lambda name: binary_of.get(name, default))


# --- encoding --------------------------------------------------------------------------


def encode(
    model: str, request_id: str | None, outputs: list[OutputTensor], binary: Callable[[str], bool]
) -> tuple[bytes, int | None]:
    """The response body, and the length of its JSON when binary data follows it."""
    entries, blobs = [], []
    for tensor in outputs:
        entry: dict[str, Any] = {
            "name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape
        }  # fmt: skip
        if binary(tensor.name):
            blob = to_raw(tensor)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = to_values(tensor)
        entries.append(entry)
    response: dict[str, Any] = {"model_name": model, "model_version": VERSION}
    if request_id is not None:
        response["id"] = request_id
    response["outputs"] = entries
    head = to_json(response)
    if not blobs:
        return head, None
    return b"".join([head, *blobs]), len(head)
