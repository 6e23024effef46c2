"""The CUDA path of the test ensemble (``device_maps``: upsampling, weighted mean and the variant masks' resize on
the models' device) against the CPU path (``finalize``, ``variant_masks.pack``); run here on CPU tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from carvana_seg.inference import ensemble, maps, stream, variant_masks


def test_device_maps_match_the_cpu_path():
    rng = np.random.default_rng(0)
    shapes = [(128, 192), (130, 190)]
    sizes = [(64, 96), (96, 96)]  # (h, w) of two variants' network outputs
    probs = [torch.from_numpy(rng.random((2, h, w), dtype=np.float32)) for h, w in sizes]
    probs[0][0, :8] = 1.0  # saturated rows, like a trained model's
    weights = [2.0, 1.0]
    mean_maps, smalls = maps.device_maps(shapes, probs, weights)
    for j, shape in enumerate(shapes):
        own = [p[j].numpy() for p in probs]
        want = maps.finalize(shape, own, weights)
        got = mean_maps[j].numpy()
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
        maps.device_maps([(4, 4)], [torch.zeros(1, 4, 4)], [0.0])


@pytest.mark.slow
def test_every_schedule_streams_the_same_maps_in_order(tmp_path, monkeypatch):
    """The CPU default (taking turns with the models, ``stream.phased``), the overlapped schedule inline
    (``CARVANA_SEG_FINISH_THREADS=0``, the CPU path before) and with 2 finishing threads (the CUDA default) stream
    exactly the same maps and variant masks, in order; with an odd batch so the last batch is short."""
    from carvana_seg.core import layout
    from carvana_seg.pipeline.errors import ConfigError
    from tests.helpers import make_layout, make_models
    from tests.inference.test_ensemble import stage_cfg, typed

    raw = make_layout(tmp_path / "raw", n_cars=1, n_test_cars=1, w=64, h=48)
    config, predict = typed(stage_cfg(batch_size=3))
    variants = ensemble.load_variants(make_models(tmp_path), config, False, torch.device("cpu"))
    ids = layout.test_ids(raw)[0]
    assert len(ids) % 3 != 0

    def run(threads: str | None) -> list:
        if threads is None:
            monkeypatch.delenv("CARVANA_SEG_FINISH_THREADS", raising=False)
        else:
            monkeypatch.setenv("CARVANA_SEG_FINISH_THREADS", threads)
        assert stream.phased(torch.device("cpu")) == (threads is None)
        return list(stream.iter_probs(variants, raw, ids, predict, torch.device("cpu"), with_variants=True))

    phased, inline, threaded = run(None), run("0"), run("2")
    assert [i for i, *_ in phased] == [i for i, *_ in threaded] == ids == [i for i, *_ in inline]
    for (_, p0, v0), (_, p1, v1), (_, p2, v2) in zip(phased, inline, threaded):
        np.testing.assert_array_equal(p0, p1)
        np.testing.assert_array_equal(p0, p2)
        np.testing.assert_array_equal(v0, v1)
        np.testing.assert_array_equal(v0, v2)
    assert not stream.phased(torch.device("cuda"))  # a GPU overlaps, whatever the environment says
    monkeypatch.setenv("CARVANA_SEG_FINISH_THREADS", "two")
    with pytest.raises(ConfigError, match="CARVANA_SEG_FINISH_THREADS"):
        stream.finish_threads(False)


def test_phased_stream_names_a_corrupt_photo_after_yielding_the_batches_before_it(tmp_path, monkeypatch):
    """A photo that fails to decode stops the CPU schedule with the DataError naming it; the batches before it
    have reached the caller, and closing leaves no thread of the stream behind."""
    import threading

    from carvana_seg.core import layout
    from carvana_seg.pipeline.errors import DataError
    from tests.helpers import make_layout, make_models
    from tests.inference.test_ensemble import stage_cfg, typed

    monkeypatch.delenv("CARVANA_SEG_FINISH_THREADS", raising=False)
    raw = make_layout(tmp_path / "raw", n_cars=1, n_test_cars=1, w=64, h=48)
    config, predict = typed(stage_cfg(batch_size=2))
    variants = ensemble.load_variants(make_models(tmp_path), config, False, torch.device("cpu"))
    ids = layout.test_ids(raw)[0]
    bad = raw / layout.TEST_DIR / layout.image_file(ids[5])
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG, in the third batch
    got = []
    with pytest.raises(DataError, match=ids[5]):
        for item in stream.iter_probs(variants, raw, ids, predict, torch.device("cpu")):
            got.append(item[0])
    assert got == ids[:4]
    assert not any(t.name.startswith("ensemble-phase") and t.is_alive() for t in threading.enumerate())
