"""app/imaging.py's fast path for plain 8-bit grayscale PNGs gives Pillow's pixels."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from app.errors import InvalidImage, PayloadTooLarge, ServeError
from app.imaging import decode, open_image
from training.datasets import load_split
from training.normalize import Mode
from training.preprocess import InputSpec, Preprocessor, to_grayscale

LIMIT = 25_000_000
MODES: tuple[Mode, ...] = ("auto", "dataset", "none")


def png(image: Image.Image, **options: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", **options)
    return buf.getvalue()


def pillow_pixels(data: bytes) -> np.ndarray:
    """What Pillow's path makes of the bytes: decode, then grayscale."""
    return np.asarray(to_grayscale(Image.open(io.BytesIO(data))), dtype=np.uint8)


def chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def gray8_png(rows: list[bytes], width: int, height: int, idat: bytes | None = None) -> bytes:
    """A hand-made gray8 PNG (filter type 0 per row); ``idat`` overrides the pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    raw = b"".join(b"\x00" + r for r in rows)
    data = zlib.compress(raw) if idat is None else idat
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
def test_every_test_image_decodes_as_pillow_decodes_it(dataset: str) -> None:
    images = load_split(dataset, train=False).images[:, 0].numpy()
    for pixels in images:
        data = png(Image.fromarray(pixels))
        fast = open_image(data, "f", LIMIT)
        assert isinstance(fast, np.ndarray)  # it took the fast path
        assert np.array_equal(fast, pixels)
        assert np.array_equal(fast, pillow_pixels(data))


@pytest.mark.parametrize(
    ("shape", "options"),
    [
        ((1, 1), {}),
        ((3, 1000), {}),
        ((1000, 3), {"optimize": True}),
        ((64, 48), {"compress_level": 0}),
        ((200, 300), {"compress_level": 9}),
        ((28, 28), {"dpi": (300, 300)}),  # a pHYs chunk: still plain
    ],
)
def test_generated_gray8_pngs_decode_as_pillow_decodes_them(
    shape: tuple[int, int], options: dict[str, object]
) -> None:
    rng = np.random.default_rng(sum(shape))
    noise = rng.integers(0, 256, shape, dtype=np.uint8)
    smooth = np.add.outer(np.arange(shape[0]), np.arange(shape[1])).astype(np.uint8)
    for pixels in (noise, smooth):
        data = png(Image.fromarray(pixels), **options)
        fast = open_image(data, "f", LIMIT)
        assert isinstance(fast, np.ndarray)
        assert np.array_equal(fast, pillow_pixels(data))


def _with_text() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "hello")
    return png(Image.new("L", (8, 8), 30), pnginfo=info)


def _with_exif() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate
    return png(Image.fromarray(np.arange(48, dtype=np.uint8).reshape(6, 8)), exif=exif)


@pytest.mark.parametrize(
    "data",
    [
        png(Image.new("L", (8, 8), 30), transparency=30),  # tRNS
        _with_text(),
        _with_exif(),
        png(Image.new("I;16", (8, 8), 3000)),
        png(Image.new("P", (8, 8), 1)),
        png(Image.new("RGB", (8, 8), (10, 200, 30))),
        png(Image.new("LA", (8, 8), (10, 128))),
        png(Image.new("1", (8, 8), 1)),
    ],
    ids=["trns", "text", "exif", "16-bit", "palette", "rgb", "gray-alpha", "1-bit"],
)
def test_anything_else_goes_through_pillow(data: bytes) -> None:
    assert isinstance(open_image(data, "f", LIMIT), Image.Image)
    assert np.array_equal(decode(data, "f", LIMIT), pillow_pixels(data))


def test_exif_orientation_is_still_applied() -> None:
    assert decode(_with_exif(), "f", LIMIT).shape == (8, 6)  # rotated


def test_corrupt_plain_pngs_are_400_and_large_ones_413() -> None:
    rows = [bytes(range(16))] * 16
    good = gray8_png(rows, 16, 16)
    assert np.array_equal(decode(good, "f", LIMIT), np.array([list(range(16))] * 16))
    short = zlib.compress(b"".join(b"\x00" + r for r in rows))[:-8]  # valid CRCs, cut data
    with pytest.raises(InvalidImage, match="corrupt"):
        decode(gray8_png(rows, 16, 16, idat=short), "f", LIMIT)
    with pytest.raises(InvalidImage):
        decode(gray8_png(rows, 16, 16, idat=b"not zlib at all"), "f", LIMIT)
    with pytest.raises(InvalidImage):  # the header promises more rows than the data holds
        decode(gray8_png(rows, 16, 40), "f", LIMIT)
    with pytest.raises(InvalidImage, match="empty size"):
        decode(gray8_png([], 0, 16), "f", LIMIT)
    with pytest.raises(PayloadTooLarge, match="over the limit"):
        decode(good, "f", 255)


def test_to_array_takes_the_pixels_as_it_takes_the_image() -> None:
    pre = Preprocessor(InputSpec(height=32, width=32, mean=[0.13], std=[0.31], fit="digit"))
    rng = np.random.default_rng(0)
    for shape in [(28, 28), (100, 60)]:
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        for mode in MODES:
            from_pixels = pre.to_array(pixels.copy(), mode)
            from_image = pre.to_array(Image.fromarray(pixels), mode)
            assert np.array_equal(from_pixels, from_image)
    with pytest.raises(ValueError, match="uint8"):
        pre.to_array(np.zeros((4, 4), dtype=np.float32))


def _refresh_crcs(data: bytes) -> bytes:
    """``data`` with every complete chunk's CRC recomputed, so a mutation gets past the CRC
    check and reaches the decoder."""
    out = bytearray(data)
    at = 8
    while at + 12 <= len(out):
        (length,) = struct.unpack_from(">I", out, at)
        end = at + 8 + length
        if end + 4 > len(out):
            break
        struct.pack_into(">I", out, end, zlib.crc32(bytes(out[at + 4 : end])))
        at = end + 4
    return bytes(out)


@settings(max_examples=1500, deadline=None)
@given(
    seed=st.integers(0, 9999),
    edits=st.lists(st.tuples(st.integers(8, 10_000), st.integers(0, 255)), max_size=6),
    cut=st.one_of(st.none(), st.integers(8, 10_000)),
)
def test_damaged_plain_pngs_are_a_4xx_or_pillows_pixels(
    seed: int, edits: list[tuple[int, int]], cut: int | None
) -> None:
    """Mutations (CRCs refreshed, so they reach the decoder) of plain gray PNGs: never
    anything but a 4xx or an image; and what the fast path accepts, Pillow accepts too,
    with the same pixels. (The fast path is stricter: it also refuses damaged zlib streams
    and out-of-spec headers that Pillow reads past.)"""
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 40)), int(rng.integers(1, 40)))
    data = bytearray(png(Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))))
    for at, value in edits:  # anywhere after the signature: IHDR fields, zlib data, lengths
        data[at % len(data)] = value
    mutated = _refresh_crcs(bytes(data[:cut] if cut else data))
    try:
        result = open_image(mutated, "f", LIMIT)
        pixels = decode(mutated, "f", LIMIT)
    except ServeError as exc:
        status = exc.status_code
    else:
        status = 200
        if isinstance(result, np.ndarray):  # the fast path took it
            assert np.array_equal(result, pillow_pixels(mutated))
        else:
            assert np.array_equal(pixels, pillow_pixels(mutated))
    assert status == 200 or 400 <= status < 500
