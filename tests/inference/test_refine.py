"""Full-resolution edge refinement (refine.py): the guided filter follows the photo's edge, is linear in the map."""

from __future__ import annotations

import numpy as np
import pytest

from carvana_seg.inference import refine
from carvana_seg.settings.predict import EdgeRefine
from tests.helpers import settings

NONE, GUIDED = settings(EdgeRefine, method="none"), settings(EdgeRefine, method="guided")


def _scene(h: int = 96, w: int = 144) -> tuple[np.ndarray, np.ndarray]:
    """A grey photo with a dark 'car' rectangle on a bright background, and its true mask."""
    truth = np.zeros((h, w), bool)
    truth[30:70, 37:101] = True
    photo = np.where(truth, 40, 210).astype(np.uint8)
    return photo, truth


def test_guided_filter_snaps_a_blurred_map_to_the_photo_edge() -> None:
    photo, truth = _scene()
    # A coarse, shifted probability map at 1/8 size (a network's soft edge), upsampled by the filter itself.
    low = np.zeros((12, 18), np.float32)
    low[4:9, 5:13] = 1.0
    import cv2

    up = cv2.resize(low, (144, 96), interpolation=cv2.INTER_LINEAR)
    q = refine.guided_filter(photo, low, radius=8, eps=1e-3, scale=2)
    assert q.shape == truth.shape and q.dtype == np.float32 and q.min() >= 0 and q.max() <= 1
    err_before = np.count_nonzero((up >= 0.5) != truth)
    err_after = np.count_nonzero((q >= 0.5) != truth)
    assert err_after < err_before / 2


def test_guided_filter_is_linear_in_the_map() -> None:
    photo, _ = _scene()
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.2, 0.4, (24, 36)).astype(np.float32), rng.uniform(0.2, 0.4, (24, 36)).astype(np.float32)
    qa, qb = refine.guided_filter(photo, a), refine.guided_filter(photo, b)
    qm = refine.guided_filter(photo, (a + b) / 2)
    np.testing.assert_allclose(qm, (qa + qb) / 2, atol=1e-4)  # refining each variant = refining their mean


def test_flat_photo_leaves_a_flat_map() -> None:
    photo = np.full((64, 64), 128, np.uint8)
    q = refine.guided_filter(photo, np.full((16, 16), 0.7, np.float32), radius=4, scale=1)
    np.testing.assert_allclose(q, 0.7, atol=1e-5)


def test_refine_config() -> None:
    p = np.full((8, 8), 0.5, np.float32)
    assert refine.refine(p, None, NONE) is p and not refine.enabled(NONE) and not refine.enabled(None)
    assert refine.enabled(GUIDED)
    with pytest.raises(ValueError, match="needs the photo"):
        refine.refine(p, None, GUIDED)
    with pytest.raises(ValueError, match="unknown edge_refine"):
        refine.refine(p, np.zeros((8, 8), np.uint8), settings(EdgeRefine, method="bilateral"))


def test_ensemble_finalize_refines_with_the_guide() -> None:
    from carvana_seg.inference import maps

    photo, truth = _scene()
    low = np.zeros((12, 18), np.float32)
    low[4:9, 5:13] = 1.0
    plain = maps.finalize(truth.shape, [low, low], [1.0, 1.0])
    sharp = maps.finalize(truth.shape, [low, low], [1.0, 1.0], photo, settings(EdgeRefine, method="guided", scale=2))
    assert plain.dtype == sharp.dtype == np.uint8 and sharp.shape == truth.shape
    assert np.count_nonzero((sharp >= 128) != truth) < np.count_nonzero((plain >= 128) != truth) / 2
    same = maps.finalize(truth.shape, [low], [1.0], photo, NONE)
    np.testing.assert_array_equal(same, maps.finalize(truth.shape, [low], [1.0]))


def test_oof_postprocess_refines_with_the_training_photo(tmp_path) -> None:
    from carvana_seg.core import images, layout
    from carvana_seg.inference import oof

    photo, truth = _scene()
    (tmp_path / layout.TRAIN_DIR).mkdir()
    (tmp_path / layout.MASK_DIR).mkdir()
    images.write_jpeg(tmp_path / layout.TRAIN_DIR / layout.image_file("abc_01"), np.dstack([photo] * 3), quality=95)
    images.write_mask_gif(tmp_path / layout.MASK_DIR / layout.mask_file("abc_01"), truth.astype(np.uint8))
    low = np.zeros((12, 18), np.float32)
    low[4:9, 5:13] = 1.0
    full0, d0 = oof._postprocess(("abc_01", low, tmp_path, NONE))
    full1, d1 = oof._postprocess(("abc_01", low, tmp_path, settings(EdgeRefine, method="guided", scale=2)))
    assert full0.shape == full1.shape == truth.shape and d1 > d0


def test_band_keeps_confident_pixels() -> None:
    photo, _ = _scene()
    low = np.zeros((12, 18), np.float32)
    low[4:9, 5:13] = 1.0
    import cv2

    up = cv2.resize(low, (144, 96), interpolation=cv2.INTER_LINEAR)
    q = refine.refine(low, photo, settings(EdgeRefine, method="guided", scale=2, band=0.05))
    sure = (up <= 0.05) | (up >= 0.95)
    assert sure.any() and (~sure).any()
    np.testing.assert_array_equal(q[sure], up[sure])
    assert not np.allclose(q[~sure], up[~sure])


def test_ensemble_shards_are_recomputed_when_the_refinement_changes(tmp_path) -> None:
    from carvana_seg.inference import ensemble

    model = tmp_path / "best.pt"
    model.write_bytes(b"weights")
    import dataclasses

    from carvana_seg.settings.folds import Folds
    from carvana_seg.settings.predict import Predict

    predict, folds = settings(Predict, shard_size=8, edge_refine=NONE), settings(Folds, k=2)
    plain = ensemble.run_hash([model], predict, [], folds, ["a_01"])
    guided = ensemble.run_hash([model], dataclasses.replace(predict, edge_refine=GUIDED), [], folds, ["a_01"])
    radius = dataclasses.replace(GUIDED, radius=16)
    assert (
        len(
            {
                plain,
                guided,
                ensemble.run_hash([model], dataclasses.replace(predict, edge_refine=radius), [], folds, ["a_01"]),
            }
        )
        == 3
    )
    # a refinement setting while the method is none changes nothing: shards of runs without it keep their hash
    assert (
        ensemble.run_hash(
            [model], dataclasses.replace(predict, edge_refine=dataclasses.replace(NONE, radius=3)), [], folds, ["a_01"]
        )
        == plain
    )
