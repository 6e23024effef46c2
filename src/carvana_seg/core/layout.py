"""The Kaggle layout of the Carvana competition and the project's directory conventions.

Image ids are file stems such as ``00087a6bd4dc_01``: a 12-hex car id and a view 01..16.
"""

from __future__ import annotations

import re
from pathlib import Path

N_VIEWS = 16
ORIG_W, ORIG_H = 1918, 1280
ID_RE = re.compile(r"^(?P<car>[0-9a-f]{12})_(?P<view>\d{2})$")

TRAIN_DIR = "train"
MASK_DIR = "train_masks"
TEST_DIR = "test"
TRAIN_MASKS_CSV = "train_masks.csv"
METADATA_CSV = "metadata.csv"
SAMPLE_SUBMISSION_CSV = "sample_submission.csv"


def parse_size(text: str, key: str = "--size") -> tuple[int, int]:
    """``"1918x1280"`` -> (1918, 1280): the project's one way to write a size, WIDTHxHEIGHT (cache directories,
    variants, ``--size`` flags); numpy shapes are (height, width) and never written as text."""
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"{key} {text!r}: expected WIDTHxHEIGHT, e.g. 1918x1280") from None
    if w <= 0 or h <= 0:
        raise ValueError(f"{key} {text!r}: width and height must be positive")
    return w, h


def car_id(image_id: str) -> str:
    """Car id of an image id or file name (``abc..._03.jpg`` -> ``abc...``)."""
    return Path(image_id).name.split(".")[0].rsplit("_", 1)[0]


def view(image_id: str) -> int:
    """View number 1..16 of an image id or file name."""
    return int(Path(image_id).name.split(".")[0].rsplit("_", 1)[1])


def image_file(image_id: str) -> str:
    """File name of a photo: ``<id>.jpg``."""
    return f"{image_id}.jpg"


def mask_file(image_id: str) -> str:
    """File name of a training mask: ``<id>_mask.gif``."""
    return f"{image_id}_mask.gif"


def list_ids(directory: Path, suffix: str = ".jpg") -> list[str]:
    """Sorted image ids of every ``*<suffix>`` file in a directory."""
    return sorted(p.name[: -len(suffix)] for p in Path(directory).glob(f"*{suffix}"))


def test_ids(raw: Path) -> tuple[list[str], int]:
    """Test ids listed in ``sample_submission.csv`` (in its order) whose photo exists, and how many are listed.

    A partial local copy (e.g. a few test cars) lists more images than it holds: the pipeline then predicts the
    present ones, and the submission it writes covers only those (and cannot be uploaded).
    """
    import csv

    raw = Path(raw)
    with open(raw / SAMPLE_SUBMISSION_CSV, newline="") as fh:
        listed = [r[0].removesuffix(".jpg") for r in list(csv.reader(fh))[1:] if r]
    present = {p.name[:-4] for p in (raw / TEST_DIR).glob("*.jpg")}
    return [i for i in listed if i in present], len(listed)
