"""app/uploads.py: the request body, as Starlette streams it, -> uploads."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartParser
from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive

from app.errors import InvalidImage, NoFile, PayloadTooLarge, ServeError, UnsupportedMediaType
from app.uploads import MAX_FIELDS, label, read_uploads

BOUNDARY = "b0undary-xyz"
CTYPE = f"multipart/form-data; boundary={BOUNDARY}"


def part(name: str, data: bytes, filename: str | None = "x.png", extra: str = "") -> bytes:
    disp = f'form-data; name="{name}"' + (
        f'; filename="{filename}"' if filename is not None else ""
    )
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disp}\r\n{extra}Content-Type: image/png\r\n\r\n"
    return head.encode() + data + b"\r\n"


def body(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def stream(receive: Receive) -> AsyncIterator[bytes]:
    """The body as the route reads it: Starlette's ``Request.stream()``."""
    return Request({"type": "http", "method": "POST", "headers": []}, receive).stream()


def read(
    data: bytes, ctype: str = CTYPE, chunk: int = 1 << 16, max_files: int = 64
) -> list[tuple[str, bytes]]:
    chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)] or [b""]

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": chunks.pop(0), "more_body": bool(chunks)}

    return asyncio.run(read_uploads(ctype, stream(receive), max_files))


def test_file_parts_in_order_with_their_names() -> None:
    payload = body(
        part("file", b"one", "a.png"),
        part("comment", b"ignored", None),
        part("other", b"not an image field", "b.png"),
        part("file", b"\r\n--not-the-boundary\r\n", "c d.png"),
        part("file", b"", ""),
    )
    assert read(payload) == [
        ("file #1 ('a.png')", b"one"),
        ("file #2 ('c d.png')", b"\r\n--not-the-boundary\r\n"),
        ("file #3", b""),  # an empty file: decode() answers it (400)
    ]


def test_the_boundary_may_be_quoted_and_the_type_any_case() -> None:
    payload = body(part("file", b"one"))
    ctype = f'Multipart/Form-Data; charset=utf-8; boundary="{BOUNDARY}"'
    assert read(payload, ctype) == [("file #1 ('x.png')", b"one")]


def test_a_file_field_that_is_not_a_file_is_422() -> None:
    with pytest.raises(NoFile, match="file #2: the 'file' part must be a file upload"):
        read(body(part("file", b"x"), part("file", b"plain text", None)))


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 1000])
def test_any_chunking_of_the_body_reads_the_same(chunk: int) -> None:
    # Data that starts like the delimiter (CRLF "--" boundary) without being it, also
    # where a chunk ends.
    delimiter = b"\r\n--" + BOUNDARY.encode()
    data = [bytes(range(256)) * 3, delimiter[:-1], b"\r", b"x" + delimiter[:5], b"last"]
    payload = body(*(part("file", d, f"{i}.png") for i, d in enumerate(data)))
    assert [d for _, d in read(payload, chunk=chunk)] == data


def test_the_boundary_inside_a_part_is_400() -> None:
    """RFC 2046: the delimiter must not occur in a part; one that does (followed by
    neither CRLF nor "--") is a malformed body, whatever the chunking."""
    payload = body(part("file", b"\r\n--" + BOUNDARY.encode() + b"x"), part("file", b"y"))
    for chunk in (1, 7, 1 << 16):
        with pytest.raises(InvalidImage, match="malformed multipart body: unexpected bytes"):
            read(payload, chunk=chunk)


def test_too_many_files_is_413_before_the_rest_is_read() -> None:
    payload = body(*(part("file", b"x") for _ in range(5)))
    assert len(read(payload, max_files=5)) == 5
    with pytest.raises(PayloadTooLarge, match="at most 4"):
        read(payload, max_files=4)
    # Files under another name count too: they are still uploads the server receives.
    with pytest.raises(PayloadTooLarge):
        read(body(part("file", b"x"), *(part("junk", b"x") for _ in range(4))), max_files=4)


def test_fields_are_bounded() -> None:
    fields = [part(f"f{i}", b"v", None) for i in range(MAX_FIELDS)]
    assert read(body(part("file", b"x"), *fields)) == [("file #1 ('x.png')", b"x")]
    with pytest.raises(InvalidImage, match="non-file fields"):
        read(body(part("file", b"x"), *fields, part("one-more", b"v", None)))


@pytest.mark.parametrize(
    ("payload", "ctype", "error", "text"),
    [
        (body(part("x", b"y", None)), CTYPE, NoFile, "no part named 'file'"),
        (body(), CTYPE, NoFile, "no part named 'file'"),
        (b"not multipart at all", CTYPE, InvalidImage, "malformed multipart"),
        (body(part("file", b"x")), "multipart/form-data", InvalidImage, "missing boundary"),
        (
            f"--{BOUNDARY}\r\nContent-Type: image/png\r\n\r\nx\r\n--{BOUNDARY}--".encode(),
            CTYPE,
            InvalidImage,
            "missing Content-Disposition",
        ),
        (
            f"--{BOUNDARY}\r\nno colon here\r\n\r\n".encode(),
            CTYPE,
            InvalidImage,
            "malformed segment header",
        ),
        (
            body(part("file", b"x", extra="X-Padding: y\r\n" * 8)),
            CTYPE,
            InvalidImage,
            "header count exceeded",
        ),
        (
            body(part("file", b"x", filename="a" * 5000)),
            CTYPE,
            InvalidImage,
            "header length exceeded",
        ),
        (body(part("file", b"x")).replace(b"\r\n", b"\n"), CTYPE, InvalidImage, "line break"),
        (b"x", "text/plain", UnsupportedMediaType, "text/plain is not accepted"),
        (b"x", "", UnsupportedMediaType, "missing Content-Type"),
        (b"", "", NoFile, "no image"),
    ],
)
def test_bad_bodies_are_client_errors(
    payload: bytes, ctype: str, error: type[ServeError], text: str
) -> None:
    with pytest.raises(error, match=text) as caught:
        read(payload, ctype)
    assert 400 <= caught.value.status_code < 500


def test_a_body_cut_short_is_400_not_the_parts_before_the_cut() -> None:
    """Every cut before the closing boundary is an error: a truncated upload never comes
    back as fewer predictions than files sent."""
    payload = body(part("file", b"one"), part("file", b"two"))
    close = payload.rindex(f"--{BOUNDARY}--".encode())
    for cut in range(1, close + len(BOUNDARY) + 3):
        with pytest.raises(InvalidImage, match="malformed multipart body") as caught:
            read(payload[:cut], chunk=7)
        assert caught.value.status_code == 400
    whole = [("file #1 ('x.png')", b"one"), ("file #2 ('x.png')", b"two")]
    assert read(payload.removesuffix(b"\r\n")) == whole  # the final CRLF is optional
    assert read(payload + b"an epilogue, ignored\r\n") == whole


def test_a_raw_image_body() -> None:
    assert read(b"\x89PNG...", "image/png", chunk=3) == [("body", b"\x89PNG...")]


def test_a_client_that_hangs_up_mid_body() -> None:
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": body(part("file", b"x"))[:20], "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    with pytest.raises(ClientDisconnect):
        asyncio.run(read_uploads(CTYPE, stream(receive), 64))


# Valid form bodies, as browsers and HTTP clients send them (file names without the
# characters HTML5 percent-encodes and older clients backslash-escape).
_filename = st.text(
    st.characters(exclude_characters='"\\%\r\n', exclude_categories=["Cs", "Cc"]), max_size=20
)
_data = st.binary(max_size=300).filter(lambda d: b"\r\n--" + BOUNDARY.encode() not in d)
_parts = st.lists(
    st.tuples(st.just("file"), _filename, _data)
    | st.tuples(st.sampled_from(["other", "comment"]), st.none() | _filename, _data),
    min_size=1,
    max_size=6,
)


def _starlette_reads(payload: bytes, chunk: int) -> list[tuple[str, bytes]]:
    """What Starlette's form parser (FastAPI's ``UploadFile``) makes of ``payload``: the
    parts named ``file``, labelled as ours are."""

    async def stream() -> Any:
        for i in range(0, len(payload), chunk):
            yield payload[i : i + chunk]

    async def run() -> list[tuple[str, bytes]]:
        parser = MultiPartParser(Headers({"content-type": CTYPE}), stream())
        form = await parser.parse()
        read = []
        for i, f in enumerate((v for k, v in form.multi_items() if k == "file"), 1):
            assert isinstance(f, UploadFile)  # a file part, not a plain field
            read.append((label(f.filename, i), await f.read()))
        await form.close()
        return read

    return asyncio.run(run())


@settings(max_examples=150, deadline=None)
@given(parts=_parts, chunk=st.integers(1, 200))
def test_valid_bodies_read_as_starlettes_form_parser_reads_them(
    parts: list[tuple[str, str | None, bytes]], chunk: int
) -> None:
    payload = body(*(part(name, data, filename) for name, filename, data in parts))
    expected = _starlette_reads(payload, chunk)
    if expected:
        assert read(payload, chunk=chunk) == expected
    else:
        with pytest.raises(NoFile):
            read(payload, chunk=chunk)
