"""The CUDA path of the test ensemble (``device_maps``: upsampling, weighted mean and the variant masks' resize on
the models' device) against the CPU path (``finalize``, ``variant_masks.pack``); run here on CPU tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from carvana_seg.inference import ensemble, variant_masks


def test_device_maps_match_the_cpu_path():
    rng = np.random.default_rng(0)
    shapes = [(128, 192), (130, 190)]
    sizes = [(64, 96), (96, 96)]  # (h, w) of two variants' network outputs
    probs = [torch.from_numpy(rng.random((2, h, w), dtype=np.float32)) for h, w in sizes]
    probs[0][0, :8] = 1.0  # saturated rows, like a trained model's
    weights = [2.0, 1.0]
    maps, smalls = ensemble.device_maps(shapes, probs, weights)
    for j, shape in enumerate(shapes):
        own = [p[j].numpy() for p in probs]
        want = ensemble.finalize(shape, own, weights)
        got = maps[j].numpy()
        assert got.dtype == np.uint8 and got.shape == shape
        assert np.abs(got.astype(int) - want).max() <= 1 and (got == want).mean() > 0.99
        packed = np.packbits(smalls[j].numpy().astype(bool), axis=-1)
        ref = variant_masks.pack(shape, own)
        assert packed.shape == ref.shape
        bits = np.unpackbits(packed, axis=-1) != np.unpackbits(ref, axis=-1)
        assert bits.mean() < 0.01  # only pixels within float rounding of the threshold may differ


def test_device_maps_reject_zero_weights():
    from carvana_seg.pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="variants.weight"):
        ensemble.device_maps([(4, 4)], [torch.zeros(1, 4, 4)], [0.0])


def test_finishing_threads_give_the_inline_maps_in_order(tmp_path, monkeypatch):
    """``CARVANA_SEG_FINISH_THREADS=2`` (the CUDA default) streams exactly what the inline CPU default streams."""
    from carvana_seg.core import layout
    from carvana_seg.pipeline.errors import ConfigError
    from tests.helpers import make_layout, make_models
    from tests.inference.test_ensemble import stage_cfg, typed

    raw = make_layout(tmp_path / "raw", n_cars=1, n_test_cars=1, w=64, h=48)
    config, predict = typed(stage_cfg(batch_size=3))
    variants = ensemble.load_variants(make_models(tmp_path), config, False, torch.device("cpu"))
    ids = layout.test_ids(raw)[0]

    def stream(threads: str) -> list:
        monkeypatch.setenv("CARVANA_SEG_FINISH_THREADS", threads)
        return list(ensemble.iter_probs(variants, raw, ids, predict, torch.device("cpu"), with_variants=True))

    inline, threaded = stream("0"), stream("2")
    assert [i for i, *_ in threaded] == ids == [i for i, *_ in inline]
    for (_, p0, v0), (_, p1, v1) in zip(inline, threaded):
        np.testing.assert_array_equal(p0, p1)
        np.testing.assert_array_equal(v0, v1)
    monkeypatch.setenv("CARVANA_SEG_FINISH_THREADS", "two")
    with pytest.raises(ConfigError, match="CARVANA_SEG_FINISH_THREADS"):
        ensemble.finish_threads(False)
