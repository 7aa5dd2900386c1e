"""A request's body -> its uploads: ``multipart/form-data`` parts named ``file``, or one raw
``image/*`` body.

The body is read straight from the ASGI ``receive`` channel and fed, chunk by chunk, to
python-multipart's streaming parser, keeping only the bytes of the ``file`` parts. This is
what Starlette's form parser does too, less what /predict does not need: a spooled
temporary file, an ``UploadFile`` and a ``Headers`` object per part, and
``parse_options_header`` on every part's ``Content-Disposition`` (the common
``form-data; name="..."; filename="..."`` form is read by one anchored pattern, anything
else still goes through python-multipart's parser). On a 64-file upload that cut the
parsing from ~35 to ~10 us per part (bench/RESULTS.md).

Limits: the body size is enforced as it streams (``BodyLimitMiddleware``); the number of
file parts here (413); python-multipart bounds the header count and size per part.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect
from starlette.types import Message

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

from app.errors import InvalidImage, NoFile, PayloadTooLarge, UnsupportedMediaType

Upload = tuple[str, bytes]  # (name for messages, bytes)
Receive = Callable[[], Awaitable[Message]]

MAX_FIELDS = 100  # non-file parts (ignored, but bounded)

# The Content-Disposition every client library sends for a file part. Values without
# quotes or backslashes inside read the same as through parse_options_header
# (tests/test_uploads.py checks that); any other form goes through it.
_SIMPLE_DISPOSITION = re.compile(rb'form-data; ?name="([^"\\]*)"(?:; ?filename="([^"\\]*)")?')


def label(filename: str | None, index: int) -> str:
    """How an upload is named in error messages: ``file #2 ('scan.png')``."""
    name = (filename or "").strip()[:100]
    return f"file #{index} ({name!r})" if name else f"file #{index}"


def disposition(value: bytes) -> tuple[bytes | None, bytes | None]:
    """``(name, filename)`` of a part's ``Content-Disposition`` (None where absent)."""
    simple = _SIMPLE_DISPOSITION.fullmatch(value)
    if simple is not None:
        return simple[1], simple[2]
    _, options = parse_options_header(value)
    return options.get(b"name"), options.get(b"filename")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


async def read_body(receive: Receive, feed: Callable[[bytes], object] | None = None) -> bytes:
    """The whole body, or with ``feed`` each chunk handed to it as it arrives (returns b'')."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunk = message.get("body", b"")
        if chunk:
            if feed is None:
                chunks.append(chunk)
            else:
                feed(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class _FormReader:
    """python-multipart callbacks that keep the ``file`` parts' bytes, in order."""

    def __init__(self, max_files: int) -> None:
        self.max_files = max_files
        self.uploads: list[Upload] = []
        self.files = 0  # parts with a filename, whatever their name
        self.fields = 0
        self._field = bytearray()
        self._value = bytearray()
        self._disposition: bytes | None = None
        self._keep = False  # is the current part a 'file' upload?
        self._name = ""
        self._data: list[bytes] = []
        self.ended = False  # has the closing boundary been read?

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_end": self.on_end,
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
        }

    def on_part_begin(self) -> None:
        self._disposition = None
        self._keep = False
        self._data = []

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        if self._field.lower() == b"content-disposition":
            self._disposition = bytes(self._value)
        self._field.clear()
        self._value.clear()

    def on_headers_finished(self) -> None:
        name, filename = disposition(self._disposition or b"")
        if name is None:
            raise InvalidImage('malformed multipart body: a part has no Content-Disposition "name"')
        if filename is not None:
            self.files += 1
            if self.files > self.max_files:
                raise PayloadTooLarge(f"too many files: at most {self.max_files} per request")
        else:
            self.fields += 1
            if self.fields > MAX_FIELDS:
                raise InvalidImage(
                    f"malformed multipart body: more than {MAX_FIELDS} non-file fields"
                )
        if name != b"file":
            return  # other fields are ignored
        index = len(self.uploads) + 1
        if filename is None:
            raise NoFile(f"{label(None, index)}: the 'file' part must be a file upload")
        self._keep = True
        self._name = label(_text(filename), index)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._keep:
            self._data.append(data[start:end])

    def on_part_end(self) -> None:
        if self._keep:
            self.uploads.append((self._name, b"".join(self._data)))
            self._data = []

    def on_end(self) -> None:
        self.ended = True


async def read_multipart(content_type: bytes, receive: Receive, max_files: int) -> list[Upload]:
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise InvalidImage("malformed multipart body: missing boundary in Content-Type")
    reader = _FormReader(max_files)
    try:
        parser = MultipartParser(boundary, reader.callbacks())
        await read_body(receive, parser.write)
        parser.finalize()
    except FormParserError:
        raise InvalidImage("malformed multipart body: invalid multipart data") from None
    if not reader.ended:  # python-multipart's finalize() does not check this
        raise InvalidImage("malformed multipart body: it ends before its closing boundary")
    if not reader.uploads:
        raise NoFile("no part named 'file' in the multipart body")
    return reader.uploads


async def read_uploads(content_type: bytes, receive: Receive, max_files: int) -> list[Upload]:
    """The request's images. ``content_type`` is the raw header (b'' when absent)."""
    media = content_type.split(b";", 1)[0].strip().lower()
    if media == b"multipart/form-data":
        return await read_multipart(content_type, receive, max_files)
    if media.startswith(b"image/"):
        return [("body", await read_body(receive))]
    if not media:
        if not await read_body(receive):
            raise NoFile(
                "no image: send multipart/form-data with 'file' parts, or a raw image/* body"
            )
        raise UnsupportedMediaType("missing Content-Type: use multipart/form-data or image/*")
    shown = _text(media)[:100]
    raise UnsupportedMediaType(
        f"Content-Type {shown} is not accepted: use multipart/form-data or image/*"
    )
