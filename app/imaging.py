"""Upload bytes -> a decoded Pillow image, with the format and pixel limits applied.

The format is sniffed from the bytes (never the file name or the declared type), and the
pixel count is read from the header and checked *before* any pixel is decoded.
"""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

from app.errors import InvalidImage, PayloadTooLarge, UnsupportedMediaType

# Pillow formats we decode; anything else is refused before a decoder runs.
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")

# decode() checks every header against the service's own (stricter, configurable) pixel
# limit before any pixel is decoded; Pillow's global bomb check (a process-wide setting)
# would only pre-empt that check with a vaguer message that omits the size.
Image.MAX_IMAGE_PIXELS = None

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


def decode(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Decode the first frame of ``data``. Raises a 400/413/415 :class:`ServeError`."""
    if not data:
        raise InvalidImage(f"{name}: empty file")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        kind = _sniff_unsupported(data)
        if kind is not None:
            raise UnsupportedMediaType(
                f"{name}: {kind} is not an image type we take (accepted: {', '.join(FORMATS)})"
            ) from None
        raise InvalidImage(f"{name}: not a decodable image") from None
    except Image.DecompressionBombError:
        raise PayloadTooLarge(f"{name}: image declares too many pixels") from None
    except Exception:
        raise InvalidImage(f"{name}: corrupt image header") from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise InvalidImage(f"{name}: image declares an empty size {width}x{height}")
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"{name}: {width}x{height} = {width * height:,} pixels is over the limit "
            f"of {max_pixels:,}"
        )
    try:
        image.seek(0)  # animated GIF, multi-page TIFF: the first frame
        image.load()
        image.getexif()  # parse EXIF now, so a broken block is a 400 here
    except Image.DecompressionBombError:
        raise PayloadTooLarge(f"{name}: decompression bomb") from None
    except Exception:
        raise InvalidImage(f"{name}: truncated or corrupt {image.format} image") from None
    return image
