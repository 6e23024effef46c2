"""Checks of an uploaded photo before any pixel is decoded: empty, not an image, too many pixels (decompression
bombs), too small, an alpha channel. Each failure is an ``InputError`` with the HTTP status and a message that names
the field and what is wrong, so the server answers 4xx JSON and never 500 for an input."""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass

from PIL import Image

from carvana_seg.core.images import oriented_size
from carvana_seg.pipeline.errors import DataError

Image.MAX_IMAGE_PIXELS = None  # the pixel limit below is ours (--max-pixels); Pillow only reads the header here
MIN_SIDE = 32  # the networks downsample 5 times: a photo needs a few pixels per output cell
ALPHA_MODES = {"RGBA", "LA", "PA", "La", "RGBa"}


class InputError(DataError):
    """A request the server refuses, with its HTTP status (400, 413, 415, 422 for an input; 401, 403 for the key;
    503 while loading or busy, with ``Retry-After`` in ``headers``). Each endpoint renders it in its own format."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.headers = status, code, headers


@dataclass(frozen=True)
class Probe:
    """What the header says: displayed size (EXIF orientation applied), Pillow mode and format."""

    width: int
    height: int
    mode: str
    format: str
    alpha: bool


def from_b64(field: str, text: str, max_bytes: int) -> bytes:
    """Bytes of a base64 field (a ``data:...;base64,`` prefix allowed); 400 when not base64, 413 when too big."""
    text = text.split(",", 1)[1] if text.startswith("data:") and "," in text else text
    if len(text) * 3 // 4 > max_bytes:
        raise InputError(
            413,
            "too_large",
            f"{field}: about {len(text) * 3 // 4 / 1e6:.1f} MB decoded, above the "
            f"upload limit of {max_bytes / 1e6:.1f} MB (--max-upload-mb)",
        )
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(400, "bad_base64", f"{field}: not valid base64 ({exc})") from exc


def probe(field: str, data: bytes, max_pixels: int, allow_alpha: bool = False) -> Probe:
    """Check a photo's header against the limits; return its size. Raises ``InputError`` naming ``field``."""
    if not data:
        raise InputError(400, "empty", f"{field}: empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as im:
            (w, h), mode, fmt = oriented_size(im), im.mode, im.format or "unknown"
            alpha = mode in ALPHA_MODES or "transparency" in im.info
    except Exception as exc:  # Pillow raises many types for non-images
        raise InputError(
            415,
            "not_an_image",
            f"{field}: not an image Pillow or OpenCV can read ({type(exc).__name__}); send a JPEG or PNG photo",
        ) from exc
    if w * h > max_pixels:
        raise InputError(
            413,
            "too_many_pixels",
            f"{field}: {w}x{h} = {w * h / 1e6:.1f} megapixels, above the limit "
            f"of {max_pixels / 1e6:.1f} (--max-megapixels)",
        )
    if min(w, h) < MIN_SIDE:
        raise InputError(422, "too_small", f"{field}: {w}x{h} pixels; a photo needs at least {MIN_SIDE} px a side")
    if alpha and not allow_alpha:
        raise InputError(
            422,
            "has_alpha",
            f"{field}: {fmt} with an alpha channel (mode {mode}); send the opaque "
            f"photo: the cut-out computes the alpha",
        )
    return Probe(w, h, mode, fmt, alpha)


def as_input_error(field: str, exc: DataError) -> InputError:
    """A decode failure (truncated, corrupt) of ``field`` as a 400 naming it."""
    msg = str(exc)
    msg = msg.split(": ", 1)[1] if ": " in msg else msg
    return InputError(400, "unreadable", f"{field}: {msg}")
