"""Image-id helpers and the partial-test-set rule."""

from __future__ import annotations

from carvana_seg.core import layout


def test_id_helpers():
    assert layout.car_id("00087a6bd4dc_03.jpg") == "00087a6bd4dc"
    assert layout.view("00087a6bd4dc_16") == 16
    assert layout.mask_file("00087a6bd4dc_01") == "00087a6bd4dc_01_mask.gif"


def test_test_ids_keep_sample_order_and_skip_absent(tiny_layout):
    ids, n_listed = layout.test_ids(tiny_layout)
    assert n_listed == 16 and len(ids) == 16
    (tiny_layout / "test" / f"{ids[3]}.jpg").unlink()
    with open(tiny_layout / "sample_submission.csv", "a") as fh:
        fh.write("ffffffffffff_01.jpg,1 1\n")
    partial, n_listed = layout.test_ids(tiny_layout)
    assert n_listed == 17
    assert partial == ids[:3] + ids[4:]
