"""Contact sheets: a flagged car's 16 views in a 4x4 grid with its mask overlaid, for a human to judge in seconds.

The final mask is green and translucent; pixels the fix removed are red, pixels it added (filled holes) blue.
The title names the car and its reasons; each tile names its view and that image's reasons. Photos are
decoded at reduced size by libjpeg (``IMREAD_REDUCED_COLOR_4``), so a sheet costs little more than its PNG.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from carvana_seg.core import layout

GRID = 4  # 4 x 4 = the 16 turntable views
TITLE_H = 28  # pixels of the title band above the grid
GREEN, RED, BLUE, GREY = (0, 200, 0), (230, 30, 30), (40, 90, 255), (90, 90, 90)


def tile_size(shape: tuple[int, int], tile_width: int) -> tuple[int, int]:
    """(width, height) of one tile for photos of ``shape`` (H, W): ``tile_width`` wide, same aspect."""
    h, w = shape
    return tile_width, max(1, round(tile_width * h / w))


def sheet_size(shape: tuple[int, int], tile_width: int) -> tuple[int, int]:
    """(height, width) of a whole sheet: the title band plus 4 x 4 tiles."""
    tw, th = tile_size(shape, tile_width)
    return TITLE_H + GRID * th, GRID * tw


def read_small(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A photo as RGB uint8 resized to ``size`` (W, H); a grey tile when the file is unreadable."""
    data = np.fromfile(path, dtype=np.uint8) if Path(path).is_file() else np.zeros(0, np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_REDUCED_COLOR_4) if data.size else None
    if img is None:
        return np.full((size[1], size[0], 3), 128, np.uint8)
    return cv2.cvtColor(cv2.resize(img, size, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)


def overlay(photo: np.ndarray, before: np.ndarray, after: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Tint ``photo`` (tile size): ``after`` green, removed (before & ~after) red, added (after & ~before) blue."""
    size = (photo.shape[1], photo.shape[0])
    small = [cv2.resize(m.astype(np.uint8) * 255, size, interpolation=cv2.INTER_AREA) >= 128 for m in (before, after)]
    out = photo.astype(np.float32)
    for region, colour in ((small[1], GREEN), (small[0] & ~small[1], RED), (small[1] & ~small[0], BLUE)):
        out[region] = (1 - alpha) * out[region] + alpha * np.float32(colour)
    return out.astype(np.uint8)


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float, width: int) -> None:
    """White text on a dark band, cut to fit ``width`` pixels."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    while text and cv2.getTextSize(text, font, scale, 1)[0][0] > width - 8:
        text = text[:-4] + "..." if len(text) > 4 else ""
    (tw, th), base = cv2.getTextSize(text, font, scale, 1)
    x, y = org
    cv2.rectangle(img, (x, y - th - 3), (x + tw + 6, y + base), (0, 0, 0), -1)
    cv2.putText(img, text, (x + 3, y), font, scale, (255, 255, 255), 1, cv2.LINE_AA)


def contact_sheet(
    tiles: list[np.ndarray | None], labels: list[str], title: str, shape: tuple[int, int], tile_width: int
) -> np.ndarray:
    """The RGB sheet: ``title`` over a 4x4 grid of ``tiles`` (views 1..16 in order; None = missing view)."""
    tw, th = tile_size(shape, tile_width)
    sheet = np.full((*sheet_size(shape, tile_width), 3), 30, np.uint8)
    _text(sheet, title, (2, TITLE_H - 8), 0.5, sheet.shape[1])
    for k in range(GRID * GRID):
        y, x = TITLE_H + (k // GRID) * th, (k % GRID) * tw
        tile = tiles[k] if k < len(tiles) and tiles[k] is not None else np.full((th, tw, 3), GREY, np.uint8)
        sheet[y : y + th, x : x + tw] = tile
        cv2.rectangle(sheet, (x, y), (x + tw - 1, y + th - 1), (0, 0, 0), 1)
        _text(sheet, labels[k] if k < len(labels) else f"{k + 1:02d}", (x + 2, y + 16), 0.4, tw)
    return sheet


def photo_path(raw: Path, image_id: str) -> Path:
    """The test photo of an image id."""
    return Path(raw) / layout.TEST_DIR / layout.image_file(image_id)
