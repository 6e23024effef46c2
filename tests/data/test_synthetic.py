"""The synthetic data source: Kaggle layout, masks that match the CSVs, determinism, plausible cars, real outliers."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from carvana_seg.core import layout, rle
from carvana_seg.core.images import read_image, read_mask
from carvana_seg.data import synthetic, synthetic_draw
from carvana_seg.pipeline.errors import ConfigError

W, H = 320, 224
SMALL = dict(n_train_cars=3, n_test_cars=3, n_outlier_cars=2, width=W, height=H, seed=7)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _cars(directory: Path) -> list[str]:
    return sorted({layout.car_id(p.name) for p in directory.glob("*.jpg")})


def _read_csv(path: Path) -> list[tuple[str, str]]:
    lines = path.read_text().split("\n")
    assert lines[0] == "img,rle_mask" and lines[-1] == ""
    return [tuple(line.split(",")) for line in lines[1:-1]]


def _features(mask: np.ndarray) -> tuple[float, float]:
    """(area fraction, bbox width / height) of a mask."""
    ys, xs = np.nonzero(mask)
    return float(mask.mean()), (xs.max() - xs.min() + 1) / (ys.max() - ys.min() + 1)


def _car_features(masks: list[np.ndarray]) -> np.ndarray:
    return np.array([_features(m) for m in masks])  # (16 views, 2)


def _out_of_range(car: np.ndarray, ref: np.ndarray) -> bool:
    """True when some view's area or bbox aspect lies clearly outside the per-view range of the reference cars."""
    lo, hi = ref.min(axis=0), ref.max(axis=0)  # (16, 2)
    return bool(((car > hi * [1.25, 1.2]) | (car < lo * [0.6, 0.83])).any())


def _ring(mask: np.ndarray, out: bool) -> np.ndarray:
    """The 1-px band just outside (``out``) or just inside the mask."""
    k = np.ones((3, 3), np.uint8)
    return (cv2.dilate(mask, k) > mask) if out else (mask > cv2.erode(mask, k))


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "demo"
    synthetic.generate(root, **SMALL)
    return root


def test_layout_and_file_names(small):
    raw = small / "raw"
    assert sorted(p.name for p in small.iterdir()) == ["ground_truth", "raw"]  # no temp dirs left behind
    assert sorted(p.name for p in raw.iterdir()) == sorted(
        [layout.TRAIN_DIR, layout.MASK_DIR, layout.TEST_DIR, layout.TRAIN_MASKS_CSV, layout.METADATA_CSV,
         layout.SAMPLE_SUBMISSION_CSV])
    train, test = _cars(raw / "train"), _cars(raw / "test")
    assert len(train) == 3 and len(test) == 3 and not set(train) & set(test)
    assert all(re.fullmatch(r"[0-9a-f]{12}", car) for car in train + test)
    views = [f"{v:02d}" for v in range(1, 17)]
    assert sorted(p.name for p in (raw / "train").iterdir()) == sorted(f"{c}_{v}.jpg" for c in train for v in views)
    assert sorted(p.name for p in (raw / "test").iterdir()) == sorted(f"{c}_{v}.jpg" for c in test for v in views)
    assert sorted(p.name for p in (raw / "train_masks").iterdir()) == sorted(
        f"{c}_{v}_mask.gif" for c in train for v in views)
    img = read_image(raw / "test" / f"{test[0]}_05.jpg")
    assert img.shape == (H, W, 3) and img.dtype == np.uint8
    assert (raw / "test" / f"{test[0]}_05.jpg").read_bytes()[:2] == b"\xff\xd8"


def test_masks_are_palette_gifs_matching_the_csv(small):
    raw = small / "raw"
    rows = _read_csv(raw / "train_masks.csv")
    names = [img for img, _ in rows]
    assert names == sorted(p.name for p in (raw / "train").iterdir())
    for img, code in rows:
        path = raw / "train_masks" / layout.mask_file(img[:-4])
        with Image.open(path) as im:
            assert im.format == "GIF" and im.mode == "P" and im.size == (W, H) and getattr(im, "n_frames", 1) == 1
            values = np.asarray(im)
        assert set(np.unique(values).tolist()) == {0, 1}
        assert rle.validate(code, (H, W)) is None
        np.testing.assert_array_equal(rle.decode(code, (H, W)), read_mask(path), err_msg=img)


def test_csvs_and_ground_truth(small):
    raw, gt = small / "raw", small / "ground_truth"
    train, test = _cars(raw / "train"), _cars(raw / "test")
    test_images = sorted(p.name for p in (raw / "test").iterdir())
    sub = (raw / "sample_submission.csv").read_bytes()
    assert sub == ("img,rle_mask\n" + "".join(f"{name},1 1\n" for name in test_images)).encode()
    meta = (raw / "metadata.csv").read_text().split("\n")
    assert meta[0] == '"id","year","make","model","trim1","trim2"' and meta[-1] == ""
    assert all(re.fullmatch(r'"[^"]*"(,"[^"]*"){5}', line) for line in meta[1:-1])
    assert [line.split(",")[0].strip('"') for line in meta[1:-1]] == sorted(train + test)
    assert sorted(p.name for p in gt.iterdir()) == ["outlier_cars.txt", "test_masks.csv"]
    rows = _read_csv(gt / "test_masks.csv")
    assert [img for img, _ in rows] == test_images
    assert all(rle.decode(code, (H, W)).sum() > 0 for _, code in rows)
    outliers = (gt / "outlier_cars.txt").read_text().split("\n")
    assert outliers[-1] == "" and outliers[:-1] == sorted(outliers[:-1])
    assert len(outliers[:-1]) == SMALL["n_outlier_cars"] and set(outliers[:-1]) <= set(test)


def test_deterministic_and_independent_of_workers(small, tmp_path):
    expected = _tree(small)
    synthetic.generate(tmp_path / "a", **{**SMALL, "workers": 2})
    assert _tree(tmp_path / "a") == expected
    synthetic.generate(tmp_path / "a", **SMALL)  # overwriting a complete data set is fine
    assert _tree(tmp_path / "a") == expected
    synthetic.generate(tmp_path / "b", **{**SMALL, "seed": 8})
    other = _tree(tmp_path / "b")
    assert not set(_cars(tmp_path / "b" / "raw" / "train")) & set(_cars(small / "raw" / "train"))
    assert other.keys() != expected.keys()


def test_cars_look_like_carvana(small):
    raw = small / "raw"
    rows = dict(_read_csv(raw / "train_masks.csv"))
    for car in _cars(raw / "train"):
        masks = [rle.decode(rows[f"{car}_{v:02d}.jpg"], (H, W)) for v in range(1, 17)]
        feats = _car_features(masks)
        assert 0.12 < feats[:, 0].mean() < 0.32, car
        assert feats[:, 0].min() > 0.05 and feats[:, 0].max() < 0.4, car
        assert min(feats[4, 1], feats[12, 1]) > 2.0 and max(feats[0, 1], feats[8, 1]) < 1.7  # side long, front narrow
        assert min(feats[4, 0], feats[12, 0]) > max(feats[0, 0], feats[8, 0])
        for v in (1, 5, 11):
            m = masks[v - 1]
            ys, xs = np.nonzero(m)
            assert abs((xs.min() + xs.max()) / 2 - W / 2) < 0.1 * W  # centred
            assert abs((ys.min() + ys.max()) / 2 - H / 2) < 0.15 * H
            grey = cv2.cvtColor(read_image(raw / "train" / f"{car}_{v:02d}.jpg"), cv2.COLOR_RGB2GRAY).astype(np.float32)
            mag = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))
            far = cv2.dilate(m, np.ones((25, 25), np.uint8)) == 0
            assert grey[far].mean() > 170  # a light studio backdrop
            # The mask outline is where the photo has its edges, not a pixel off: the 1-px rings just outside and
            # just inside the mask are sharper than the background and than the rings of a grown / shrunk mask.
            outer, inner = mag[_ring(m, out=True)].mean(), mag[_ring(m, out=False)].mean()
            assert min(outer, inner) > 5 * mag[far].mean()
            assert outer > 1.5 * mag[_ring(cv2.dilate(m, np.ones((3, 3), np.uint8)), out=True)].mean()
            assert inner > 1.5 * mag[_ring(cv2.erode(m, np.ones((3, 3), np.uint8)), out=False)].mean()
            quarter = (xs.max() - xs.min()) // 4
            shadow = grey[ys.max() + 2: ys.max() + 5, xs.min() + quarter: xs.max() - quarter]
            assert shadow.mean() < grey[far].mean() - 20  # the floor shadow lies outside the mask


def test_generated_outliers_fall_outside_training(small):
    gt, raw = small / "ground_truth", small / "raw"
    train_rows, test_rows = dict(_read_csv(raw / "train_masks.csv")), dict(_read_csv(gt / "test_masks.csv"))

    def feats(rows, car):
        return _car_features([rle.decode(rows[f"{car}_{v:02d}.jpg"], (H, W)) for v in range(1, 17)])

    ref = np.stack([feats(train_rows, car) for car in _cars(raw / "train")])
    for car in (gt / "outlier_cars.txt").read_text().split():
        assert _out_of_range(feats(test_rows, car), ref), car


def _drawn_car(seed: int, kind: str = "normal") -> np.ndarray:
    rng = np.random.default_rng(seed)
    car = synthetic_draw.sample_car(rng, kind)
    bg = synthetic_draw.studio(rng, 240, 160)
    return _car_features([synthetic_draw.render_view(car, bg, v * 22.5, rng)[1] for v in range(16)])


@pytest.fixture(scope="module")
def normal_cars() -> np.ndarray:
    ref = np.stack([_drawn_car(seed) for seed in range(12)])
    assert not any(_out_of_range(_drawn_car(seed), ref) for seed in range(100, 104))  # the criterion is not trivial
    return ref


@pytest.mark.parametrize("kind", synthetic_draw.OUTLIER_KINDS)
def test_every_outlier_kind_is_unlike_normal_cars(kind, normal_cars):
    assert all(_out_of_range(_drawn_car(seed, kind), normal_cars) for seed in range(200, 203))


def test_full_size_default(tmp_path):
    synthetic.generate(tmp_path / "full", n_train_cars=1, n_test_cars=0, n_outlier_cars=0, workers=2)
    raw = tmp_path / "full" / "raw"
    (car,) = _cars(raw / "train")
    assert read_image(raw / "train" / f"{car}_03.jpg").shape == (layout.ORIG_H, layout.ORIG_W, 3)
    mask = read_mask(raw / "train_masks" / f"{car}_03_mask.gif")
    assert mask.shape == (layout.ORIG_H, layout.ORIG_W) and 0.1 < mask.mean() < 0.35
    assert (raw / "sample_submission.csv").read_text() == "img,rle_mask\n"
    assert len(_read_csv(raw / "train_masks.csv")) == 16


def test_bad_arguments_and_failed_runs_leave_no_half_data(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="n_outlier_cars"):
        synthetic.generate(tmp_path / "x", n_train_cars=2, n_test_cars=1, n_outlier_cars=2, width=W, height=H)
    with pytest.raises(ConfigError, match="width"):
        synthetic.generate(tmp_path / "x", n_train_cars=2, n_test_cars=1, n_outlier_cars=0, width=10, height=H)
    args = dict(n_train_cars=2, n_test_cars=1, n_outlier_cars=1, width=W, height=H)
    synthetic.generate(tmp_path / "d", **args)
    before = _tree(tmp_path / "d")
    calls = []

    def failing_write(path, rgb, quality=90):
        calls.append(path)
        if len(calls) > 20:
            raise OSError("disk full")
        cv2.imwrite(str(path), rgb)

    monkeypatch.setattr(synthetic, "write_jpeg", failing_write)
    for root in (tmp_path / "d", tmp_path / "e"):
        with pytest.raises(OSError, match="disk full"):
            synthetic.generate(root, **{**args, "seed": 3})
        calls.clear()
    assert _tree(tmp_path / "d") == before  # the old complete data set is untouched
    assert not (tmp_path / "e" / "raw").exists() and list((tmp_path / "e").iterdir()) == []
