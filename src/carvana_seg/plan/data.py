"""How big a config's data is: image counts, photo size and bytes on disk, per data source.

``kaggle`` plans the full competition (``COMPETITION``); ``local`` counts and measures the files of ``data.path``
(directories; for zips the competition's numbers); ``synthetic`` counts cars x 16 views at the configured size.
Bytes per file come from the real sample (``SAMPLE_BYTES``), scaled by pixels for other photo sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from carvana_seg.core import layout

# Measured on ../shared/carvana-sample (768 train photos, 80 test photos of 1918x1280, their GIF masks and
# train_masks.csv): `du -b` of each directory / its file count.
SAMPLE_BYTES = {"train_jpeg": 104_000, "test_jpeg": 98_000, "mask_gif": 5_950, "rle_csv_row": 9_240}
SAMPLE_PIXELS = layout.ORIG_W * layout.ORIG_H
HQ_FACTOR = 15.0  # train_hq/test_hq JPEGs are ~1.5 MB against ~0.1 MB (Kaggle's data page: 7.8 GB vs 0.4 GB zips)


@dataclass(frozen=True)
class DataSize:
    """The numbers every stage's cost is a function of."""

    n_train: int
    n_test: int
    width: int
    height: int
    train_jpeg: float  # bytes per training photo
    test_jpeg: float
    mask_gif: float
    rle_row: float  # bytes of one image's RLE line in a csv
    source: str
    linked: bool = False  # local directories are symlinked into raw/, not copied

    @property
    def raw_bytes(self) -> float:
        """The extracted Kaggle layout: photos, masks and the csvs."""
        return (
            self.n_train * (self.train_jpeg + self.mask_gif + self.rle_row)
            + self.n_test * self.test_jpeg
            + self.n_test * 40
        )  # sample_submission.csv: id and a placeholder per test image

    @property
    def archive_bytes(self) -> float:
        """The downloaded zips (JPEG and GIF do not compress further); 0 for sources that bring no zips."""
        if self.source != "kaggle":
            return 0.0
        return self.n_train * (self.train_jpeg + self.mask_gif) + self.n_test * self.test_jpeg + self.n_train * 3_000


COMPETITION = {"n_train": 5_088, "n_test": 100_064}


def _scaled(key: str, pixels: int, hq: bool = False) -> float:
    return SAMPLE_BYTES[key] * pixels / SAMPLE_PIXELS * (HQ_FACTOR if hq and key.endswith("jpeg") else 1.0)


def _mean_size(files: list[Path], fallback: float) -> float:
    return sum(f.stat().st_size for f in files) / len(files) if files else fallback


def data_size(config: dict) -> DataSize:
    """The ``DataSize`` of a resolved config (see the module docstring)."""
    data = config["data"]
    source, hq = data["source"], data["hq"]
    if source == "synthetic":
        syn = data["synthetic"]
        w, h = syn["width"], syn["height"]
        n_train, n_test = 16 * syn["n_train_cars"], 16 * syn["n_test_cars"]  # outlier cars are test cars
        return DataSize(
            n_train,
            n_test,
            w,
            h,
            _scaled("train_jpeg", w * h),
            _scaled("test_jpeg", w * h),
            _scaled("mask_gif", w * h),
            _scaled("rle_csv_row", w * h),
            source,
        )
    full = COMPETITION if data["include_test"] else dict(COMPETITION, n_test=0)
    w, h = layout.ORIG_W, layout.ORIG_H
    sizes = {k: _scaled(k, w * h, hq) for k in SAMPLE_BYTES}
    if source == "local" and data["path"] and (Path(data["path"]) / layout.TRAIN_DIR).is_dir():
        root = Path(data["path"])
        train = sorted((root / (layout.TRAIN_DIR + ("_hq" if hq else ""))).glob("*.jpg"))
        test = sorted((root / (layout.TEST_DIR + ("_hq" if hq else ""))).glob("*.jpg"))
        masks = sorted((root / layout.MASK_DIR).glob("*.gif"))[:200]
        return DataSize(
            len(train),
            len(test),
            w,
            h,
            _mean_size(train[:200], sizes["train_jpeg"]),
            _mean_size(test[:200], sizes["test_jpeg"]),
            _mean_size(masks, sizes["mask_gif"]),
            sizes["rle_csv_row"],
            source,
            linked=True,
        )
    return DataSize(
        full["n_train"],
        full["n_test"],
        w,
        h,
        sizes["train_jpeg"],
        sizes["test_jpeg"],
        sizes["mask_gif"],
        sizes["rle_csv_row"],
        source,
    )


def fold_sizes(n_train: int, k: int) -> tuple[float, float]:
    """(training images, validation images) of an average fold: cars are split evenly by ``folds``."""
    val = n_train / k
    return n_train - val, val


def n_pseudo(config: dict, n_test: int) -> int:
    """Test images pseudo-labelled per round (``pseudo.n_to_select``; flagged cars are not subtracted)."""
    from carvana_seg.pseudo.stage import n_to_select

    pl = config["pseudo_label"]
    return min(n_test, n_to_select(n_test, pl["select_share"], pl["select_count"]))
