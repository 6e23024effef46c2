"""Resize cache: shapes, coverage masks, interpolation choice, atomic writes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from carvana_seg.core import layout
from carvana_seg.core.images import read_mask
from carvana_seg.data import resize_cache
from carvana_seg.pipeline.errors import DataError


def test_interpolation_choice():
    assert resize_cache.interpolation((1918, 1280), (1024, 1024)) == cv2.INTER_AREA
    assert resize_cache.interpolation((1918, 1280), (1280, 1280)) == cv2.INTER_AREA
    assert resize_cache.interpolation((1918, 1280), (1920, 1280)) == cv2.INTER_LINEAR


def test_mask_coverage_keeps_edge_information():
    mask = np.zeros((8, 8), np.uint8)
    mask[:, :3] = 1  # 3/8 of each row; halving width gives a pixel half covered
    small = resize_cache.resize_mask(mask, (4, 8))
    assert small.dtype == np.uint8
    assert small[0].tolist() == [255, 128, 0, 0]
    assert small.astype(float).mean() / 255 == pytest.approx(mask.mean(), abs=0.01)


@pytest.mark.parametrize("size", [(1024, 1024), (1344, 896), (1280, 1280), (96, 64), (960, 640), (1920, 1280)])
def test_mask_resize_equals_the_float_path(size):
    """The uint8 INTER_AREA shortcut gives the float32 path's numbers (rounded to nearest) on car-like masks."""
    rng = np.random.default_rng(size[0])
    yy, xx = np.mgrid[0:1280, 0:1918]
    for _ in range(3):
        cx, cy, rx, ry = rng.uniform(700, 1200), rng.uniform(500, 800), rng.uniform(200, 700), rng.uniform(100, 400)
        mask = ((((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2) <= 1).astype(np.uint8)
        mask[rng.integers(0, 1280, 500), rng.integers(0, 1918, 500)] ^= 1  # speckle: odd coverage sums
        want = cv2.resize(mask.astype(np.float32) * 255.0, size,
                          interpolation=resize_cache.interpolation((1918, 1280), size))
        np.testing.assert_array_equal(resize_cache.resize_mask(mask, size), np.clip(np.rint(want), 0, 255))


@pytest.mark.parametrize("workers", [1, 2])
def test_build_and_load(tiny_layout, tmp_path, workers):
    ids = layout.list_ids(tiny_layout / "train")
    out = tmp_path / "cache" / "32x32"
    resize_cache.build(tiny_layout, ids, (32, 32), out, workers=workers)
    images, masks, got_ids = resize_cache.load(out)
    assert got_ids == ids
    assert images.shape == (len(ids), 32, 32, 3) and images.dtype == np.uint8
    assert masks.shape == (len(ids), 32, 32) and masks.dtype == np.uint8
    full = read_mask(tiny_layout / "train_masks" / f"{ids[5]}_mask.gif")
    assert masks[5].mean() / 255 == pytest.approx(full.mean(), abs=0.02)
    assert not list(out.parent.glob("*.tmp-*"))


def test_corrupt_input_leaves_no_cache(tiny_layout, tmp_path):
    ids = layout.list_ids(tiny_layout / "train")
    (tiny_layout / "train_masks" / f"{ids[3]}_mask.gif").unlink()
    out = tmp_path / "cache" / "32x32"
    with pytest.raises(DataError, match=f"{ids[3]}_mask.gif"):
        resize_cache.build(tiny_layout, ids, (32, 32), out)
    assert not out.exists()
    assert not list((tmp_path / "cache").glob("*"))


def test_reduction_keeps_at_least_the_target_pixels():
    assert resize_cache.reduction((1918, 1280), (96, 64)) == 2  # never beyond 1/2 (REDUCTIONS)
    assert resize_cache.reduction((1918, 1280), (959, 640)) == 2
    assert resize_cache.reduction((1918, 1280), (960, 640)) == 1  # 1918 // 2 = 959 < 960
    assert resize_cache.reduction((1918, 1280), (1024, 1024)) == 1
    assert resize_cache.reduction((1918, 1280), (1344, 896)) == 1


def test_reduced_decode_matches_full_decode_and_the_cache(tmp_path):
    """A 1918x1280 photo at 96x64: the 1/2 JPEG decode + INTER_AREA is practically the full decode's result, and
    the cache, the ensemble and predict (all through load_resized) get the very same pixels."""
    from carvana_seg.core.images import read_image
    from carvana_seg.data.synthetic import generate

    generate(tmp_path, n_train_cars=1, n_test_cars=1, n_outlier_cars=0, seed=3)
    raw = tmp_path / "raw"
    ids = layout.list_ids(raw / "train")[:4]
    resize_cache.build(raw, ids, (96, 64), tmp_path / "cache")
    images, _, _ = resize_cache.load(tmp_path / "cache")
    for k, image_id in enumerate(ids):
        path = raw / "train" / layout.image_file(image_id)
        shape, (small, square) = resize_cache.load_resized(path, [(96, 64), (96, 96)])
        assert shape == (1280, 1918) and small.shape == (64, 96, 3) and square.shape == (96, 96, 3)
        assert np.array_equal(images[k], small)
        full = resize_cache.resize_image(read_image(path), (96, 64))
        diff = np.abs(full.astype(int) - small.astype(int))
        assert diff.mean() < 0.25 and np.percentile(diff, 99) <= 2, (diff.mean(), np.percentile(diff, 99))
