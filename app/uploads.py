"""A request's body -> its uploads: ``multipart/form-data`` parts named ``file``, or one raw
``image/*`` body.

The body is read as it streams and fed, chunk by chunk, to the sans-IO
``PushMultipartParser`` of `multipart <https://multipart.readthedocs.io/>`_, keeping only
the bytes of the ``file`` parts (docs/decisions/0003-multipart-parser.md).

Limits: the body size is enforced as it streams (``BodyLimitMiddleware``); the number of
file parts (413) and of other fields here; the parser bounds the size and number of each
part's header lines. A body that is not what an HTML5 form or an HTTP client sends is a
400 that says what is wrong with it: a part without a Content-Disposition, a header line
that is not ``name: value``, the boundary inside a part's data (RFC 2046 forbids it), a
body that ends before its closing boundary.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from typing import TypeAlias

from multipart import (
    MultipartError,
    MultipartSegment,
    ParserError,
    PushMultipartParser,
    parse_options_header,
)

from app.errors import InvalidImage, NoFile, PayloadTooLarge, UnsupportedMediaType
from app.pipeline import Upload

Body = AsyncIterator[bytes]  # the request body as it streams in (Request.stream())
# What the parser yields (see _FormReader). multipart ships no type hints: to mypy,
# MultipartSegment is Any.
Event: TypeAlias = MultipartSegment | bytes | None

MAX_FIELDS = 100  # non-file parts (ignored, but bounded)


def label(filename: str | None, index: int) -> str:
    """How an upload is named in error messages: ``file #2 ('scan.png')``."""
    name = (filename or "").strip()[:100]
    return f"file #{index} ({name!r})" if name else f"file #{index}"


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


async def read_body(body: Body, feed: Callable[[bytes], object] | None = None) -> bytes:
    """The whole body, or with ``feed`` each chunk handed to it as it arrives (returns b'')."""
    chunks: list[bytes] = []
    async for chunk in body:
        if not chunk:
            continue
        if feed is None:
            chunks.append(chunk)
        else:
            feed(chunk)
    return b"".join(chunks)


class _FormReader:
    """Keeps the ``file`` parts' bytes, in order, from the parser's events: per part one
    :class:`MultipartSegment` (its headers), its data as zero or more ``bytes``, then
    ``None``."""

    def __init__(self, max_files: int) -> None:
        self.max_files = max_files
        self.uploads: list[Upload] = []
        self.files = 0  # parts with a filename, whatever their name
        self.fields = 0
        self._name: str | None = None  # the current part's label, if it is a 'file' upload
        self._data: list[bytes] = []

    def take(self, events: Iterable[Event]) -> None:
        for event in events:
            if event is None:
                self._end()
            elif isinstance(event, MultipartSegment):
                self._begin(event)
            elif self._name is not None:
                self._data.append(event)

    def _begin(self, segment: MultipartSegment) -> None:
        filename = segment.filename
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
        if segment.name != "file":
            return  # other fields are ignored
        index = len(self.uploads) + 1
        if filename is None:
            raise NoFile(f"{label(None, index)}: the 'file' part must be a file upload")
        # Headers are read as latin-1 (any bytes); clients send file names as UTF-8.
        self._name = label(_text(filename.encode("latin-1")), index)

    def _end(self) -> None:
        if self._name is not None:
            self.uploads.append((self._name, b"".join(self._data)))
            self._name = None
            self._data = []


async def read_multipart(content_type: str, body: Body, max_files: int) -> list[Upload]:
    _, params = parse_options_header(content_type)
    boundary = params.get("boundary")
    if not boundary:
        raise InvalidImage("malformed multipart body: missing boundary in Content-Type")
    reader = _FormReader(max_files)
    try:
        parser = PushMultipartParser(boundary, header_charset="latin-1")
        await read_body(body, lambda chunk: reader.take(parser.parse(chunk)))
    except MultipartError as exc:  # the parser's reason, e.g. "Malformed segment header"
        reason = str(exc)
        raise InvalidImage(f"malformed multipart body: {reason[:1].lower()}{reason[1:]}") from None
    try:
        parser.close()
    except ParserError:
        raise InvalidImage(
            "malformed multipart body: it ends before its closing boundary"
        ) from None
    if not reader.uploads:
        raise NoFile("no part named 'file' in the multipart body")
    return reader.uploads


async def read_uploads(content_type: str, body: Body, max_files: int) -> list[Upload]:
    """The request's images. ``content_type`` is the header's value ('' when absent)."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "multipart/form-data":
        return await read_multipart(content_type, body, max_files)
    if media.startswith("image/"):
        return [("body", await read_body(body))]
    if not media:
        if not await read_body(body):
            raise NoFile(
                "no image: send multipart/form-data with 'file' parts, or a raw image/* body"
            )
        raise UnsupportedMediaType("missing Content-Type: use multipart/form-data or image/*")
    raise UnsupportedMediaType(
        f"Content-Type {media[:100]} is not accepted: use multipart/form-data or image/*"
    )
