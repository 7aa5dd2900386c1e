"""Hostile and odd uploads: every case has its documented answer.

The corpus is generated here (nothing large is committed). Two kinds of case:

* ``REJECTED``: a specific 4xx and a fragment of the ``detail`` message; per-file errors
  must also name the upload.
* ``ACCEPTED``: a valid but unusual encoding of a real MNIST test digit; the answer must be
  that digit (not merely a 200).

The pixel bombs are also sent to a real server process, whose peak resident memory
(``VmHWM``) must stay within :data:`BOMB_RSS_BOUND` of where it was before them.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.helpers import encode, running_server
from training.datasets import Split

Digits = dict[int, np.ndarray]  # class -> a 28x28 uint8 MNIST test image of that class

# The bombs together may not raise the server's peak RSS by more than this (a decoded
# 30000x30000 image alone would be 900 MB; the largest legitimate cost is buffering a raw
# body up to the 10 MiB limit).
BOMB_RSS_BOUND = 32 * 1024 * 1024
REQUEST_TIMEOUT = 60.0  # a hang fails the test; no timing is asserted


@dataclass
class Req:
    """One upload: multipart ``file`` part (default) or a raw body."""

    data: bytes | Callable[[], Iterator[bytes]]
    name: str = "upload.png"
    ctype: str = "image/png"
    raw: bool = False
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


def send(client: TestClient | httpx.Client, req: Req) -> httpx.Response:
    if req.raw:
        body = req.data() if callable(req.data) else req.data
        headers = {"content-type": req.ctype, **req.headers} if req.ctype else req.headers
        return client.post("/predict", content=body, headers=headers, params=req.params)
    assert isinstance(req.data, bytes)
    files = {"file": (req.name, req.data, req.ctype)}
    return client.post("/predict", files=files, params=req.params, headers=req.headers)


# ---------------------------------------------------------------------------- crafting


PNG_SIG = b"\x89PNG\r\n\x1a\n"


def chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def ihdr(width: int, height: int, depth: int = 8, color: int = 0) -> bytes:
    return chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0))


def zeros_deflated(total: int, block: int = 1 << 20) -> bytes:
    """``total`` zero bytes, deflated, without ever holding them all in memory."""
    comp = zlib.compressobj(9)
    zero = bytes(block)
    out = []
    for start in range(0, total, block):
        out.append(comp.compress(zero[: min(block, total - start)]))
    out.append(comp.flush())
    return b"".join(out)


def png_bomb(width: int, height: int) -> bytes:
    """A complete, valid 1-bit PNG of ``width x height`` zeros: a few hundred KB on the wire."""
    row = 1 + (width + 7) // 8
    return (
        PNG_SIG
        + ihdr(width, height, 1, 0)
        + chunk(b"IDAT", zeros_deflated(row * height))
        + chunk(b"IEND", b"")
    )


def png_header_only(width: int, height: int) -> bytes:
    tiny = chunk(b"IDAT", zlib.compress(b"\x00" * 2))
    return PNG_SIG + ihdr(width, height) + tiny + chunk(b"IEND", b"")


def with_chunks_before_idat(png: bytes, extra: bytes) -> bytes:
    at = png.index(b"IDAT") - 4
    return png[:at] + extra + png[at:]


def corrupt_crc(png: bytes, kind: bytes) -> bytes:
    at = png.index(kind) - 4
    (length,) = struct.unpack(">I", png[at : at + 4])
    crc_at = at + 8 + length
    bad = bytes(b ^ 0xFF for b in png[crc_at : crc_at + 4])
    return png[:crc_at] + bad + png[crc_at + 4 :]


def gif_huge_screen() -> bytes:
    """GIF89a with a 65535x65535 logical screen holding a 1x1 frame."""
    header = b"GIF89a" + struct.pack("<HHBBB", 65535, 65535, 0x80, 0, 0) + b"\x00" * 3 + b"\xff" * 3
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return header + frame + b"\x3b"


def jpeg_with_size(jpeg: bytes, width: int, height: int) -> bytes:
    """Rewrite the frame header (SOF0/SOF2) to declare another size."""
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        at = jpeg.find(marker)
        if at >= 0:
            size = struct.pack(">HH", height, width)
            return jpeg[: at + 5] + size + jpeg[at + 9 :]
    raise AssertionError("no SOF marker")


def tiff_with_size(width: int, height: int) -> bytes:
    tiff = encode(Image.new("L", (4, 4)), "TIFF")
    for tag, value in ((256, width), (257, height)):
        for typ in (3, 4):  # SHORT or LONG entry
            fmt = "<HHIH2x" if typ == 3 else "<HHII"
            old = struct.pack(fmt, tag, typ, 1, 4)
            if old in tiff:
                tiff = tiff.replace(old, struct.pack("<HHII", tag, 4, 1, value))
                break
        else:
            raise AssertionError(f"tag {tag} not found")
    return tiff


def zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("digit.png", b"not really")
    return buf.getvalue()


def chunked(total: int, piece: int = 1 << 20) -> Callable[[], Iterator[bytes]]:
    def gen() -> Iterator[bytes]:
        sent = 0
        while sent < total:
            n = min(piece, total - sent)
            sent += n
            yield b"\x00" * n

    return gen


def multipart_many(n: int, png: bytes) -> Req:
    boundary = "b0undary"
    parts = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{i}.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + png
        + b"\r\n"
        for i in range(n)
    )
    body = parts + f"--{boundary}--\r\n".encode()
    return Req(body, raw=True, ctype=f"multipart/form-data; boundary={boundary}")


def exif_bytes(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def stored_for_orientation(img: Image.Image, orientation: int) -> Image.Image:
    """The pixels a camera would store so that ``orientation`` displays ``img`` upright."""
    inverse = {
        3: Image.Transpose.ROTATE_180,
        6: Image.Transpose.ROTATE_90,  # viewer rotates 90 clockwise
        8: Image.Transpose.ROTATE_270,  # viewer rotates 90 counter-clockwise
    }
    return img.transpose(inverse[orientation])


def la_tiff_premultiplied(img: np.ndarray) -> bytes:
    """Grayscale TIFF with an associated (premultiplied) alpha: Pillow opens it as 'La'."""
    la = np.stack([np.full_like(img, 255), img], axis=-1)
    tiff = encode(Image.fromarray(la, mode="LA"), "TIFF")
    unassociated = struct.pack("<HHIH", 338, 3, 1, 2)
    assert unassociated in tiff
    return tiff.replace(unassociated, struct.pack("<HHIH", 338, 3, 1, 1))


def white_ink_alpha(img: np.ndarray, mode: str) -> Image.Image:
    """White ink whose opacity is the digit, on a fully transparent canvas."""
    ink = np.full_like(img, 255)
    if mode == "LA":
        return Image.fromarray(np.stack([ink, img], axis=-1), mode="LA")
    return Image.fromarray(np.stack([ink, ink, ink, img], axis=-1), mode="RGBA")


def palette_transparent(img: np.ndarray) -> bytes:
    p = Image.fromarray(img).convert("RGB").quantize(32)
    # the palette index of the background (the top-left pixel is background in MNIST)
    return encode(p, "PNG", transparency=p.getpixel((0, 0)))


def sixteen_bit(img: np.ndarray) -> Image.Image:
    wide = Image.fromarray(img.astype(np.uint16) * 257)
    assert wide.mode.startswith("I;16")
    return wide


def one_bit(img: np.ndarray) -> Image.Image:
    return Image.fromarray(np.where(img >= 128, 255, 0).astype(np.uint8)).convert("1")


def float_tiff_nonfinite(img: np.ndarray) -> bytes:
    arr = img.astype(np.float32) / 255.0
    arr[0, 0], arr[0, 1], arr[27, 27] = np.nan, np.inf, -np.inf
    return encode(Image.fromarray(arr, mode="F"), "TIFF")


def animated_gif(first: np.ndarray, second: np.ndarray) -> bytes:
    frames = [Image.fromarray(first), Image.fromarray(second)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def multipage_tiff(first: np.ndarray, second: np.ndarray) -> bytes:
    pages = [Image.fromarray(first), Image.fromarray(second)]
    return encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])


def rgb(img: np.ndarray) -> Image.Image:
    return Image.fromarray(img).convert("RGB")


# ---------------------------------------------------------------------------- the cases


@dataclass
class Rejected:
    id: str
    build: Callable[[Digits], Req]
    status: int
    fragment: str
    names_file: bool = False  # the detail names the upload (per-file errors)


def png_of(d: Digits) -> bytes:
    return encode(d[3])


def jpeg_of(d: Digits) -> bytes:
    return encode(rgb(d[3]), "JPEG", quality=90)


MB = 1024 * 1024
NOT_TAKEN = "is not an image type we take"

REJECTED = [
    Rejected("empty-file", lambda d: Req(b""), 400, "empty file", True),
    Rejected("empty-raw-body", lambda d: Req(b"", raw=True), 400, "empty file"),
    Rejected("no-body-no-type", lambda d: Req(b"", raw=True, ctype=""), 422, "no image"),
    Rejected(
        "multipart-without-file",
        lambda d: Req(
            b'--x\r\nContent-Disposition: form-data; name="other"\r\n\r\nhi\r\n--x--\r\n',
            raw=True,
            ctype="multipart/form-data; boundary=x",
        ),
        422,
        "no part named 'file'",
    ),
    Rejected(
        "random-bytes",
        lambda d: Req(np.random.default_rng(0).bytes(4096), name="noise.png"),
        400,
        "not a decodable image",
        True,
    ),
    Rejected(
        "text-named-png",
        lambda d: Req(b"hello, I am a digit\n" * 20, name="t.png"),
        415,
        "text",
        True,
    ),
    Rejected(
        "svg-named-png",
        lambda d: Req(
            b'<svg xmlns="http://www.w3.org/2000/svg"><circle r="9"/></svg>', name="s.png"
        ),
        415,
        "SVG image",
        True,
    ),
    Rejected(
        "svg-with-xml-prolog",
        lambda d: Req(
            b'<?xml version="1.0"?>\n<svg><rect/></svg>', name="s.svg", ctype="image/svg+xml"
        ),
        415,
        NOT_TAKEN,
        True,
    ),
    Rejected(
        "pdf-named-jpg",
        lambda d: Req(b"%PDF-1.7\n%\xe2\xe3\n1 0 obj", name="p.jpg"),
        415,
        "PDF",
        True,
    ),
    Rejected("zip-named-png", lambda d: Req(zip_bytes(), name="z.png"), 415, "ZIP archive", True),
    Rejected(
        "html-named-gif",
        lambda d: Req(b"<!DOCTYPE html><html></html>", name="h.gif"),
        415,
        "HTML",
        True,
    ),
    Rejected(
        "heic-named-jpg",
        lambda d: Req(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64, name="photo.jpg"),
        415,
        "HEIF/AVIF",
        True,
    ),
    Rejected(
        "png-cut-in-half",
        lambda d: Req(png_of(d)[: len(png_of(d)) // 2], name="half.png"),
        400,
        "truncated or corrupt",
        True,
    ),
    Rejected(
        "jpeg-cut-in-half",
        lambda d: Req(jpeg_of(d)[: len(jpeg_of(d)) // 2], name="half.jpg", ctype="image/jpeg"),
        400,
        "corrupt",
        True,
    ),
    Rejected(
        "gif-cut-in-half",
        lambda d: Req(encode(Image.fromarray(d[3]), "GIF")[:150], name="half.gif"),
        400,
        "",
        True,
    ),
    Rejected(
        "tiff-cut-short",
        lambda d: Req(encode(Image.fromarray(d[3]), "TIFF")[:400], name="short.tiff"),
        400,
        "",
        True,
    ),
    Rejected(
        "png-bad-ihdr-crc",
        lambda d: Req(corrupt_crc(png_of(d), b"IHDR"), name="crc.png"),
        400,
        "IHDR chunk fails its CRC check",
        True,
    ),
    Rejected(
        "png-bad-idat-crc",
        lambda d: Req(corrupt_crc(png_of(d), b"IDAT"), name="crc.png"),
        400,
        "IDAT chunk fails its CRC check",
        True,
    ),
    Rejected(
        "png-zero-width",
        lambda d: Req(png_header_only(0, 28), name="zero.png"),
        400,
        "",
        True,
    ),
    Rejected(
        "png-chunk-claims-2GiB",
        lambda d: Req(
            PNG_SIG + ihdr(28, 28) + struct.pack(">I", 2**31) + b"tEXt" + b"a" * 64,
            name="huge-chunk.png",
        ),
        400,
        "",
        True,
    ),
    Rejected(
        "png-bomb-30000x30000",
        lambda d: Req(png_bomb(30000, 30000), name="bomb.png"),
        413,
        "pixels",
        True,
    ),
    Rejected(
        "png-header-65535x65535",
        lambda d: Req(png_header_only(65535, 65535), name="bomb.png"),
        413,
        "pixels",
        True,
    ),
    Rejected(
        "png-header-6000x6000-over-25MP",
        lambda d: Req(png_header_only(6000, 6000), name="big.png"),
        413,
        "36,000,000 pixels is over the limit",
        True,
    ),
    Rejected(
        "gif-huge-logical-screen",
        lambda d: Req(gif_huge_screen(), name="s.gif"),
        413,
        "pixels",
        True,
    ),
    Rejected(
        "jpeg-header-65500x65500",
        lambda d: Req(jpeg_with_size(jpeg_of(d), 65500, 65500), name="big.jpg"),
        413,
        "pixels",
        True,
    ),
    Rejected(
        "tiff-header-60000x60000",
        lambda d: Req(tiff_with_size(60000, 60000), name="big.tiff"),
        413,
        "pixels",
        True,
    ),
    Rejected(
        "upload-25MB",
        lambda d: Req(PNG_SIG + bytes(25 * MB), name="big.png"),
        413,
        "request body is over the limit",
    ),
    Rejected(
        "upload-25MB-chunked-no-length",
        lambda d: Req(chunked(25 * MB), raw=True),
        413,
        "request body is over the limit",
    ),
    Rejected(
        "ztxt-inflates-to-64MiB",
        lambda d: Req(
            with_chunks_before_idat(
                png_of(d), chunk(b"zTXt", b"Comment\x00\x00" + zeros_deflated(64 * MB))
            ),
            name="ztxt.png",
        ),
        413,
        "compressed metadata",
        True,
    ),
    Rejected(
        "iccp-inflates-to-64MiB",
        lambda d: Req(
            with_chunks_before_idat(
                png_of(d), chunk(b"iCCP", b"icc\x00\x00" + zeros_deflated(64 * MB))
            ),
            name="iccp.png",
        ),
        413,
        "compressed metadata",
        True,
    ),
    Rejected(
        "ztxt-80-chunks-of-1MiB",
        lambda d: Req(
            with_chunks_before_idat(
                png_of(d),
                b"".join(
                    chunk(b"zTXt", b"k%d\x00\x00" % i + zeros_deflated(MB - 4096))
                    for i in range(80)
                ),
            ),
            name="many-text.png",
        ),
        413,
        "compressed metadata",
        True,
    ),
    Rejected("65-files", lambda d: multipart_many(65, png_of(d)), 413, "too many files"),
    Rejected(
        "json-content-type",
        lambda d: Req(b'{"image": "x"}', raw=True, ctype="application/json"),
        415,
        "application/json is not accepted",
    ),
    Rejected(
        "multipart-without-boundary",
        lambda d: Req(b"--x\r\n\r\n", raw=True, ctype="multipart/form-data"),
        400,
        "malformed multipart",
    ),
    Rejected(
        "unknown-model",
        lambda d: Req(png_of(d), params={"model": "../../etc/passwd"}),
        404,
        "unknown model",
    ),
    Rejected("top-k-zero", lambda d: Req(png_of(d), params={"top_k": "0"}), 422, "top_k"),
]


@dataclass
class Accepted:
    id: str
    build: Callable[[Digits], Req]
    label: int  # the MNIST class the answer must be


ACCEPTED = [
    Accepted("png-control", lambda d: Req(encode(d[7])), 7),
    Accepted(
        "png-16bit",
        lambda d: Req(encode(sixteen_bit(d[2]))),
        2,
    ),
    Accepted("png-LA-transparent", lambda d: Req(encode(white_ink_alpha(d[4], "LA"))), 4),
    Accepted("png-RGBA-transparent", lambda d: Req(encode(white_ink_alpha(d[5], "RGBA"))), 5),
    Accepted(
        "webp-RGBA-transparent",
        lambda d: Req(
            encode(white_ink_alpha(d[6], "RGBA"), "WEBP", lossless=True),
            name="a.webp",
            ctype="image/webp",
        ),
        6,
    ),
    Accepted(
        "tiff-premultiplied-La",
        lambda d: Req(la_tiff_premultiplied(d[8]), name="la.tiff", ctype="image/tiff"),
        8,
    ),
    Accepted("png-palette", lambda d: Req(encode(rgb(d[9]).quantize(64))), 9),
    Accepted("png-palette-transparent-background", lambda d: Req(palette_transparent(d[0])), 0),
    Accepted("png-1bit", lambda d: Req(encode(one_bit(d[1]))), 1),
    Accepted(
        "bmp-1bit", lambda d: Req(encode(one_bit(d[7]), "BMP"), name="b.bmp", ctype="image/bmp"), 7
    ),
    Accepted(
        "jpeg-CMYK",
        lambda d: Req(
            encode(rgb(d[3]).convert("CMYK"), "JPEG", quality=95), name="c.jpg", ctype="image/jpeg"
        ),
        3,
    ),
    Accepted(
        "tiff-CMYK",
        lambda d: Req(encode(rgb(d[4]).convert("CMYK"), "TIFF"), name="c.tiff", ctype="image/tiff"),
        4,
    ),
    Accepted(
        "tiff-float-with-nan-and-inf",
        lambda d: Req(float_tiff_nonfinite(d[2]), name="f.tiff", ctype="image/tiff"),
        2,
    ),
    Accepted("tiff-16bit", lambda d: Req(encode(sixteen_bit(d[5]), "TIFF"), name="i16.tiff"), 5),
    Accepted(
        "jpeg-exif-orientation-3",
        lambda d: Req(
            encode(stored_for_orientation(rgb(d[4]), 3), "JPEG", quality=95, exif=exif_bytes(3)),
            name="o3.jpg",
            ctype="image/jpeg",
        ),
        4,
    ),
    Accepted(
        "jpeg-exif-orientation-6",
        lambda d: Req(
            encode(stored_for_orientation(rgb(d[4]), 6), "JPEG", quality=95, exif=exif_bytes(6)),
            name="o6.jpg",
            ctype="image/jpeg",
        ),
        4,
    ),
    Accepted(
        "jpeg-exif-orientation-8",
        lambda d: Req(
            encode(stored_for_orientation(rgb(d[4]), 8), "JPEG", quality=95, exif=exif_bytes(8)),
            name="o8.jpg",
            ctype="image/jpeg",
        ),
        4,
    ),
    Accepted(
        "png-exif-orientation-6",
        lambda d: Req(
            encode(stored_for_orientation(Image.fromarray(d[4]), 6), "PNG", exif=exif_bytes(6))
        ),
        4,
    ),
    Accepted(
        "gif-animated-first-frame",
        lambda d: Req(animated_gif(d[6], d[1]), name="a.gif", ctype="image/gif"),
        6,
    ),
    Accepted(
        "tiff-multipage-first-page",
        lambda d: Req(multipage_tiff(d[9], d[1]), name="m.tiff", ctype="image/tiff"),
        9,
    ),
    Accepted(
        "bmp-grayscale",
        lambda d: Req(encode(Image.fromarray(d[8]), "BMP"), name="g.bmp", ctype="image/bmp"),
        8,
    ),
    Accepted(
        "bmp-rgb", lambda d: Req(encode(rgb(d[0]), "BMP"), name="c.bmp", ctype="image/bmp"), 0
    ),
    Accepted(
        "webp-lossless",
        lambda d: Req(encode(rgb(d[1]), "WEBP", lossless=True), name="l.webp", ctype="image/webp"),
        1,
    ),
    Accepted(
        "webp-lossy",
        lambda d: Req(encode(rgb(d[2]), "WEBP", quality=90), name="q.webp", ctype="image/webp"),
        2,
    ),
    Accepted(
        "jpeg-grayscale",
        lambda d: Req(
            encode(Image.fromarray(d[3]), "JPEG", quality=95), name="g.jpg", ctype="image/jpeg"
        ),
        3,
    ),
    Accepted(
        "jpeg-progressive",
        lambda d: Req(
            encode(rgb(d[4]), "JPEG", quality=95, progressive=True),
            name="p.jpg",
            ctype="image/jpeg",
        ),
        4,
    ),
    Accepted("png-named-jpg", lambda d: Req(encode(d[5]), name="digit.jpg", ctype="image/jpeg"), 5),
    Accepted(
        "png-named-txt-octet-stream",
        lambda d: Req(encode(d[6]), name="digit.txt", ctype="application/octet-stream"),
        6,
    ),
    Accepted("png-junk-after-IEND", lambda d: Req(encode(d[6]) + b"JUNK" * 1000), 6),
    Accepted(
        "jpeg-junk-after-EOI",
        lambda d: Req(
            encode(rgb(d[8]), "JPEG", quality=95) + b"\x00garbage" * 500,
            name="j.jpg",
            ctype="image/jpeg",
        ),
        8,
    ),
    Accepted("png-raw-body", lambda d: Req(encode(d[9]), raw=True), 9),
    Accepted(
        "png-upscaled-to-2000x2000-rgb", lambda d: Req(encode(rgb(d[0]).resize((2000, 2000)))), 0
    ),
]


# ---------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def digits(client: TestClient, mnist_test: Split) -> Digits:
    """For each class, the first test image the default model gets right with p > 0.99."""
    images = mnist_test.images[:64, 0].numpy()
    labels = mnist_test.labels[:64].tolist()
    files = [("file", (f"{i}.png", encode(img), "image/png")) for i, img in enumerate(images)]
    predictions = client.post("/predict", files=files).json()["predictions"]
    chosen: Digits = {}
    for img, label, pred in zip(images, labels, predictions, strict=True):
        if label not in chosen and int(pred["label"]) == label and pred["probability"] > 0.99:
            chosen[label] = img
    assert sorted(chosen) == list(range(10))
    return chosen


def test_corpus_size() -> None:
    assert len(REJECTED) + len(ACCEPTED) >= 30
    ids = [c.id for c in REJECTED] + [c.id for c in ACCEPTED]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("case", REJECTED, ids=lambda c: c.id)
def test_rejected(client: TestClient, digits: Digits, case: Rejected) -> None:
    req = case.build(digits)
    response = send(client, req)
    assert response.status_code == case.status, response.text
    detail = response.json()["detail"]
    text = detail if isinstance(detail, str) else str(detail)
    assert case.fragment in text
    if case.names_file:
        assert req.name in text


@pytest.mark.parametrize("case", ACCEPTED, ids=lambda c: c.id)
def test_accepted(client: TestClient, digits: Digits, case: Accepted) -> None:
    response = send(client, case.build(digits))
    assert response.status_code == 200, response.text
    (prediction,) = response.json()["predictions"]
    assert prediction["label"] == str(case.label), prediction


def test_exif_orientation_is_what_makes_it_upright(client: TestClient, digits: Digits) -> None:
    """Control for the orientation cases: the stored pixels alone are not read as the digit."""
    for orientation in (3, 6, 8):
        stored = stored_for_orientation(rgb(digits[4]), orientation)
        response = send(client, Req(encode(stored, "JPEG", quality=95), name="x.jpg"))
        assert response.json()["predictions"][0]["label"] != "4", orientation


@pytest.mark.parametrize(("width", "height"), [(1, 1), (1, 5000), (5000, 1)])
def test_degenerate_sizes_get_an_answer(client: TestClient, width: int, height: int) -> None:
    img = Image.new("L", (width, height), 255)
    response = send(client, Req(encode(img), name=f"{width}x{height}.png"))
    assert response.status_code == 200, response.text
    (prediction,) = response.json()["predictions"]
    assert sum(prediction["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


def test_one_bad_file_fails_the_request_and_names_it(client: TestClient, digits: Digits) -> None:
    files = [
        ("file", ("good.png", encode(digits[1]), "image/png")),
        ("file", ("bad.png", b"\x89PNG\r\n\x1a\nnope", "image/png")),
    ]
    response = client.post("/predict", files=files)
    assert response.status_code == 400
    assert "file #2 ('bad.png')" in response.json()["detail"]


# ---------------------------------------------------------------------------- real process


def peak_rss(pid: int) -> int:
    """The process's peak resident set size (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


BOMBS = [
    "png-bomb-30000x30000",
    "png-header-65535x65535",
    "gif-huge-logical-screen",
    "jpeg-header-65500x65500",
    "tiff-header-60000x60000",
    "ztxt-inflates-to-64MiB",
    "iccp-inflates-to-64MiB",
    "ztxt-80-chunks-of-1MiB",
    "upload-25MB",
    "upload-25MB-chunked-no-length",
]


@pytest.mark.slow
def test_bombs_bounded_memory_on_a_real_server(digits: Digits) -> None:
    cases = {c.id: c for c in REJECTED}
    with (
        running_server() as server,
        httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT) as http,
    ):
        # one ordinary request first, so first-request allocations are in the baseline
        assert send(http, Req(encode(digits[1]))).status_code == 200
        before = peak_rss(server.process.pid)
        for name in BOMBS:
            case = cases[name]
            response = send(http, case.build(digits))
            assert response.status_code == case.status, (name, response.text)
        after = peak_rss(server.process.pid)
        assert http.get("/health/ready").status_code == 200
    assert after - before < BOMB_RSS_BOUND, f"peak RSS grew {(after - before) / MB:.1f} MiB"
