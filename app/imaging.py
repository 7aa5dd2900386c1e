"""Stage 1 of the pipeline, ``decode``: upload bytes -> ``(H, W)`` uint8 grayscale pixels,
with the format and pixel limits applied.

The format is sniffed from the bytes (never the file name or the declared type), and the
pixel count is read from the header and checked *before* any pixel is decoded.

Pillow decodes every format. A plain 8-bit grayscale PNG (what MNIST-style clients send: no
transparency, no EXIF, no text chunks that could change what the image means) goes to
libspng (pyspng) instead, which is ~5x faster on it (docs/decisions/0004-png-fast-path.md).
Both give the same pixels (tests/app/test_imaging.py); the CRC and size checks run before either.
On damaged files the fast path is the stricter: it also refuses a zlib stream that is cut
short, fails its checksum or holds more rows than the header says, which Pillow reads past.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pyspng
from PIL import Image, UnidentifiedImageError

from app.errors import InvalidImage, PayloadTooLarge, ServeError, UnsupportedMediaType
from training.preprocess import gray_pixels

# Pillow's own messages when compressed metadata inflates past its limits (app/runtime.py).
_METADATA_BOMB = ("Decompressed data too large", "Too much memory used in text chunks")

# Pillow formats we decode; anything else is refused before a decoder runs.
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")

# Signatures of common non-image uploads, for a 415 that says what was sent.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "PDF document"),
    (b"PK\x03\x04", "ZIP archive"),
    (b"\x1f\x8b", "gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "7z archive"),
    (b"Rar!", "RAR archive"),
    (b"BZh", "bzip2 archive"),
    (b"\xfd7zXZ", "xz archive"),
    (b"<svg", "SVG image"),
    (b"<?xml", "XML document"),
    (b"<!DOCTYPE", "HTML document"),
    (b"<html", "HTML document"),
    (b"{", "JSON document"),
    (b"\x00\x00\x01\x00", "ICO image"),
    (b"8BPS", "PSD image"),
    (b"\x00\x00\x00\x0cjP", "JPEG 2000 image"),
)


def _sniff_unsupported(data: bytes) -> str | None:
    head = data[:512].lstrip()
    lower = head.lower()
    for magic, kind in _SIGNATURES:
        if lower.startswith(magic.lower()):
            return kind
    if b"<svg" in lower:
        return "SVG image"
    if data[4:12] in (b"ftypavif", b"ftypheic", b"ftypmif1"):
        return "HEIF/AVIF image"
    try:
        text = data[:4096].decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text and all(c.isprintable() or c.isspace() for c in text):
        return "text"
    return None


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


Chunk = tuple[bytes, int, int]  # type, payload start, payload end
_U32 = struct.Struct(">I").unpack_from  # a big-endian uint32, as PNG lengths and CRCs are


def _check_png_crcs(data: bytes, name: str) -> list[Chunk] | None:
    """Pillow skips the CRCs of pixel-data chunks; a PNG whose data fails its checksum is
    corrupt, and we say so rather than classify damaged pixels. Chunks that run past the
    end of the upload are left to the decoder (a truncated-file error).

    Returns the chunks up to IEND, or None when the file ends before IEND.
    """
    view = memoryview(data)
    size = len(data)
    at = len(_PNG_SIGNATURE)
    chunks: list[Chunk] = []
    while at + 12 <= size:
        (length,) = _U32(data, at)
        end = at + 8 + length
        if end + 4 > size:
            return None
        kind = data[at + 4 : at + 8]
        if zlib.crc32(view[at + 4 : end]) != _U32(data, end)[0]:
            label = kind.decode("latin-1") if kind.isalpha() else repr(kind)
            raise InvalidImage(f"{name}: PNG {label} chunk fails its CRC check (corrupt file)")
        chunks.append((kind, at + 8, end))
        if kind == b"IEND":
            return chunks  # anything after the image end is ignored, as by every viewer
        at = end + 4
    return None


# Chunks that do not change what a grayscale PNG's pixels mean to Pillow (colour-space
# and size hints). Anything else (tRNS transparency, eXIf orientation, text that can
# hold EXIF or XMP, APNG frames, ...) sends the upload down Pillow's path.
_PLAIN_CHUNKS = frozenset(
    {b"IHDR", b"IDAT", b"IEND", b"gAMA", b"cHRM", b"sRGB", b"sBIT", b"pHYs", b"tIME"}
)


def _is_plain_gray8(data: bytes, chunks: list[Chunk]) -> bool:
    # IHDR is the first chunk (offset 8): width, height, bit depth 8, colour type 0 (gray),
    # compression, filter method, interlace 0 (none).
    return (
        chunks[0][0] == b"IHDR"
        and data[24:26] == b"\x08\x00"
        and data[28] == 0
        and all(kind in _PLAIN_CHUNKS for kind, _, _ in chunks)
    )


def _check_size(width: int, height: int, name: str, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise InvalidImage(f"{name}: image declares an empty size {width}x{height}")
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"{name}: {width}x{height} = {width * height:,} pixels is over the limit "
            f"of {max_pixels:,}"
        )


def _decode_plain_gray8(data: bytes, chunks: list[Chunk], name: str, max_pixels: int) -> np.ndarray:
    width, height = struct.unpack_from(">II", data, 16)
    _check_size(width, height, name, max_pixels)
    # libspng stops inflating once it has every row, so it would take a damaged stream that
    # Pillow rejects: inflate it here in full first, checking its end and its Adler-32
    # (bounded: a row is a filter byte and `width` pixels).
    size = height * (width + 1)
    inflate = zlib.decompressobj()
    produced = 0
    view = memoryview(data)
    try:
        for kind, start, end in chunks:
            if kind == b"IDAT":
                produced += len(inflate.decompress(view[start:end], size + 1 - produced))
                if produced > size:
                    break
    except zlib.error:
        raise InvalidImage(f"{name}: truncated or corrupt PNG image") from None
    if not inflate.eof or produced != size:
        raise InvalidImage(f"{name}: truncated or corrupt PNG image")
    try:
        pixels: np.ndarray = pyspng.load(data)
    except Exception:  # libspng's errors on corrupt data (RuntimeError)
        raise InvalidImage(f"{name}: truncated or corrupt PNG image") from None
    if pixels.shape != (height, width) or pixels.dtype != np.uint8:
        raise InvalidImage(f"{name}: truncated or corrupt PNG image")
    return pixels


def decode(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """The first frame of ``data`` as upright ``(H, W)`` uint8 grayscale pixels (EXIF
    orientation applied, transparency flattened: :func:`training.preprocess.to_grayscale`).
    Raises a 400/413/415 :class:`ServeError`; ``name`` labels the upload in its message."""
    return gray_pixels(open_image(data, name, max_pixels))


def open_image(data: bytes, name: str, max_pixels: int) -> Image.Image | np.ndarray:
    """The first frame of ``data``, decoded: a Pillow image of any mode, or for a plain
    8-bit grayscale PNG its pixels. Raises as :func:`decode`."""
    if not data:
        raise InvalidImage(f"{name}: empty file")
    if data.startswith(_PNG_SIGNATURE):
        chunks = _check_png_crcs(data, name)
        if chunks is not None and _is_plain_gray8(data, chunks):
            return _decode_plain_gray8(data, chunks, name, max_pixels)
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        kind = _sniff_unsupported(data)
        if kind is not None:
            raise UnsupportedMediaType(
                f"{name}: {kind} is not an image type we take (accepted: {', '.join(FORMATS)})"
            ) from None
        raise InvalidImage(f"{name}: not a decodable image") from None
    except Exception as exc:
        raise _client_error(exc, name, "corrupt image header") from None
    _check_size(*image.size, name, max_pixels)
    try:
        image.seek(0)  # animated GIF, multi-page TIFF: the first frame
        image.load()
        image.getexif()  # parse EXIF now, so a broken block is a 400 here
    except Exception as exc:
        raise _client_error(exc, name, f"truncated or corrupt {image.format} image") from None
    return image


def _client_error(exc: Exception, name: str, otherwise: str) -> ServeError:
    """The 4xx for a Pillow failure on client bytes: bombs are 413, anything else 400.

    Pillow raises every kind of exception on hostile data (OSError, SyntaxError, struct and
    zlib errors...), so this is reached by a broad ``except`` around the parser/decoder.
    """
    if isinstance(exc, Image.DecompressionBombError):
        return PayloadTooLarge(f"{name}: image declares too many pixels")
    if isinstance(exc, ValueError) and str(exc).startswith(_METADATA_BOMB):
        return PayloadTooLarge(
            f"{name}: compressed metadata (text or ICC chunks) inflates past the limit"
        )
    return InvalidImage(f"{name}: {otherwise}")
