"""What a cut-out looks like: alpha, background colour or picture, crop, preview size, and the encoded file.

Pure numpy/OpenCV, shared by the HTTP API (``serve.app``) and the batch tool (``predict``), so a folder cut in batch
and a photo sent to the server give the same bytes for the same options. Options follow the remove.bg API:
``format`` png | jpg | zip (the colour JPEG plus the alpha PNG) | json (the RLE), ``channels`` rgba | alpha,
``bg_color``, a background picture scaled to cover, ``crop`` with ``crop_margin``, ``size`` (``SIZES``).
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass

import cv2
import numpy as np

from carvana_seg.core import rle

try:  # the fast PNG writer (requirements.txt); an environment without it encodes with OpenCV, the same pixels
    import fpng
except ImportError:  # pragma: no cover
    fpng = None
from carvana_seg.pipeline.errors import DataError

FORMATS = ("png", "jpg", "zip", "json")
CHANNELS = ("rgba", "alpha")
# size: the most pixels of the answer, remove.bg's names (None: the photo's own size; preview/small/regular 0.25 MP,
# medium 1.5 MP, hd 4 MP; auto, full and 4k: as large as the photo, which is what remove.bg's full resolution is)
SIZES = {
    "full": None,
    "auto": None,
    "4k": None,
    "preview": 250_000,
    "small": 250_000,
    "regular": 250_000,
    "medium": 1_500_000,
    "hd": 4_000_000,
}
PREVIEW_PIXELS = SIZES["preview"]
MEDIA_TYPES = {"png": "image/png", "jpg": "image/jpeg", "zip": "application/zip", "json": "application/json"}
COLOR_NAMES = {
    "white": "ffffff",
    "black": "000000",
    "red": "ff0000",
    "green": "008000",
    "blue": "0000ff",
    "gray": "808080",
    "grey": "808080",
    "yellow": "ffff00",
    "transparent": None,
}


class OptionError(DataError):
    """An option of a cut-out request that is not valid (answered 422 by the server)."""


@dataclass(frozen=True)
class Options:
    """How to render a cut-out; ``validate`` checks every field and names the bad one."""

    format: str = "png"
    channels: str = "rgba"
    bg_color: str | None = None
    crop: bool = False
    crop_margin: str = "0"
    size: str = "full"

    def validate(self) -> Options:
        for name, allowed in (("format", FORMATS), ("channels", CHANNELS), ("size", SIZES)):
            if getattr(self, name) not in allowed:
                raise OptionError(f"{name}: must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        parse_color(self.bg_color)
        margin_px((10, 10), self.crop_margin)
        return self


def parse_color(value: str | None) -> tuple[int, int, int, int] | None:
    """``bg_color`` -> RGBA: a name (white, black, ...), hex ``rgb``/``rrggbb``/``rrggbbaa`` with or without '#';
    None or ``transparent`` for no colour."""
    if value is None or value.strip() == "":
        return None
    v = value.strip().lower()
    v = COLOR_NAMES.get(v, v) if v in COLOR_NAMES else v.removeprefix("#")
    if v is None:
        return None
    if re.fullmatch(r"[0-9a-f]{3}", v):
        v = "".join(c * 2 for c in v)
    if not re.fullmatch(r"[0-9a-f]{6}([0-9a-f]{2})?", v):
        raise OptionError(f"bg_color: expected a colour name or hex rgb/rrggbb/rrggbbaa, got {value!r}")
    rgba = [int(v[i : i + 2], 16) for i in range(0, len(v), 2)]
    return (*rgba[:3], rgba[3] if len(rgba) == 4 else 255)


def margin_px(shape: tuple[int, int], margin: str) -> int:
    """``crop_margin`` in pixels: ``"30"`` / ``"30px"`` or ``"10%"`` of the larger side (at most 50 %)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(px|%)?\s*", str(margin))
    if not m:
        raise OptionError(f"crop_margin: expected pixels (30, 30px) or a percentage (10%), got {margin!r}")
    value = float(m.group(1))
    if m.group(2) == "%":
        if value > 50:
            raise OptionError(f"crop_margin: at most 50%, got {margin!r}")
        return round(value / 100 * max(shape))
    return int(value)


def crop_box(mask: np.ndarray, margin: int) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of the mask's bounding box plus ``margin`` px, inside the photo; None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    h, w = mask.shape
    return (
        max(0, int(xs.min()) - margin),
        max(0, int(ys.min()) - margin),
        min(w, int(xs.max()) + 1 + margin),
        min(h, int(ys.max()) + 1 + margin),
    )


def cover(background: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A background picture scaled (keeping its aspect) and centre-cropped to cover ``shape`` (H, W) exactly."""
    h, w = shape
    bh, bw = background.shape[:2]
    s = max(w / bw, h / bh)
    nw, nh = max(w, int(np.ceil(bw * s))), max(h, int(np.ceil(bh * s)))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    big = cv2.resize(background, (nw, nh), interpolation=interp)
    y0, x0 = (nh - h) // 2, (nw - w) // 2
    return big[y0 : y0 + h, x0 : x0 + w]


def render(
    rgb: np.ndarray, mask: np.ndarray, opts: Options, background: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(image, alpha) after background, crop and size: image is RGBA (no background) or RGB (composited)."""
    alpha = np.where(mask, 255, 0).astype(np.uint8)
    color = parse_color(opts.bg_color)
    if background is not None:
        bg = cover(background, rgb.shape[:2])
        image = np.where(mask[..., None], rgb, bg)
    elif color is not None and color[3] == 255:
        image = np.where(mask[..., None], rgb, np.array(color[:3], np.uint8))
    elif color is not None:  # a translucent colour: the background keeps that alpha
        image = np.dstack(
            [
                np.where(mask[..., None], rgb, np.array(color[:3], np.uint8)),
                np.where(mask, 255, color[3]).astype(np.uint8),
            ]
        )
    else:
        image = np.dstack([rgb, alpha])
    if opts.crop:
        box = crop_box(mask, margin_px(mask.shape, opts.crop_margin))
        if box is not None:
            x0, y0, x1, y1 = box
            image, alpha = image[y0:y1, x0:x1], alpha[y0:y1, x0:x1]
    cap = SIZES[opts.size]
    if cap is not None and alpha.size > cap:
        s = (cap / alpha.size) ** 0.5
        wh = (max(1, int(alpha.shape[1] * s)), max(1, int(alpha.shape[0] * s)))
        image = cv2.resize(image, wh, interpolation=cv2.INTER_AREA)
        alpha = cv2.resize(alpha, wh, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(image), np.ascontiguousarray(alpha)


def _png(image: np.ndarray) -> bytes:
    """PNG bytes of an RGB(A) or grey image. Colour goes through fpng: 8 ms for a 1918x1280 RGBA cut-out against
    128 ms with OpenCV at level 1, the same pixels, 1.4x the bytes (benchmarks/encode.py, docs/serve.md)."""
    if image.ndim == 3 and fpng is not None:
        return fpng.from_ndarray(np.ascontiguousarray(image))
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA if image.shape[2] == 4 else cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])  # level 1: ~3x faster, ~10 % larger
    if not ok:
        raise DataError("PNG encoding failed")
    return buf.tobytes()


def _jpg(rgb: np.ndarray, quality: int = 92) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb[..., :3], cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise DataError("JPEG encoding failed")
    return buf.tobytes()


def encode(
    rgb: np.ndarray, mask: np.ndarray, opts: Options, background: np.ndarray | None = None, extra: dict | None = None
) -> tuple[bytes, tuple[int, int]]:
    """The response file of a cut-out and its (width, height). ``json`` holds the full-size mask's RLE (Kaggle's
    row-major convention (1-indexed), as in ``submission.csv.gz``) and ``extra`` (threshold, run)."""
    if opts.format == "json":
        h, w = mask.shape
        return json.dumps({"width": w, "height": h, "rle_mask": rle.encode(mask), **(extra or {})}).encode(), (w, h)
    image, alpha = render(rgb, mask, opts, background)
    wh = (alpha.shape[1], alpha.shape[0])
    if opts.channels == "alpha":
        return (_png(alpha) if opts.format != "jpg" else _jpg(np.dstack([alpha] * 3))), wh
    if opts.format == "png":
        return _png(image), wh
    if opts.format == "jpg":  # no alpha in a JPEG: a cut-out without background colour goes on white
        flat = image if image.shape[2] == 3 else np.where(alpha[..., None] > 0, image[..., :3], np.uint8(255))
        return _jpg(flat), wh
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("color.jpg", _jpg(image))
        zf.writestr("alpha.png", _png(alpha))
    return buf.getvalue(), wh
