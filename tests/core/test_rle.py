"""RLE in the Carvana convention: real rows, round trips (hypothesis), validation, and the reference encoder."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from carvana_seg.core import rle
from carvana_seg.core.images import read_mask


def test_known_small_mask():
    mask = np.array([[0, 1, 1], [1, 0, 0]], dtype=np.uint8)
    # Row-major flattening: 0 1 1 1 0 0 -> one run starting at pixel 2 (1-indexed), length 3.
    assert rle.encode(mask) == "2 3"
    assert rle.decode("2 3", (2, 3)).tolist() == mask.tolist()


def test_row_major_not_column_major():
    mask = np.zeros((2, 3), np.uint8)
    mask[0, :] = 1
    assert rle.encode(mask) == "1 3"  # column-major would give "1 1 3 1 5 1"


def test_runs_touching_both_ends_and_empty():
    assert rle.encode(np.ones((2, 2), np.uint8)) == "1 4"
    assert rle.encode(np.zeros((4, 5), np.uint8)) == ""
    assert rle.decode("", (4, 5)).sum() == 0
    assert rle.encode(np.array([[1, 0, 0, 1]], bool)) == "1 1 4 1"


@settings(max_examples=200, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 40), st.integers(1, 40)), elements=st.integers(0, 1)))
def test_round_trip_and_reference_agree(mask):
    text = rle.encode(mask)
    assert np.array_equal(rle.decode(text, mask.shape), mask)
    flat = np.concatenate([[0], mask.flatten(), [0]])  # the usual Kaggle kernel, as an independent oracle
    runs = np.where(flat[1:] != flat[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    assert text == " ".join(map(str, runs))
    assert rle.validate(text, mask.shape) is None


def test_decode_rejects_runs_outside_image():
    with pytest.raises(ValueError):
        rle.decode("5 10", (2, 3))
    with pytest.raises(ValueError):
        rle.decode("1", (2, 3))


@pytest.mark.parametrize(
    "text,problem",
    [
        ("3 2 1 1", "ascending"),
        ("1 3 2 2", "overlapping"),
        ("5 3", "past the end"),
        ("0 2", "below 1"),
        ("1 0", "non-positive"),
        ("1 2 3", "odd"),
        ("a b", "non-integer"),
    ],
)
def test_validate_flags_bad_runs(text, problem):
    assert problem in rle.validate(text, (2, 3))


@pytest.mark.real
def test_real_rows_match_real_gifs(real_sample):
    df = pd.read_csv(real_sample / "train_masks.csv").head(12)
    for img, text in zip(df["img"], df["rle_mask"]):
        mask = read_mask(real_sample / "train_masks" / img.replace(".jpg", "_mask.gif"))
        assert mask.shape == (1280, 1918)
        assert rle.encode(mask) == text, img
        assert np.array_equal(rle.decode(text, mask.shape), mask)


@pytest.mark.real
def test_published_prefix_of_first_real_row(real_sample):
    first = pd.read_csv(real_sample / "train_masks.csv").iloc[0]
    assert first["img"] == "00087a6bd4dc_01.jpg"
    assert first["rle_mask"].startswith("879386 40 881253 141 883140 205")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 30), st.integers(0, 6)), max_size=8), st.sampled_from([" ", "  ", "\t", "\n"]))
def test_decode_matches_reference_on_any_runs(runs, sep):
    """Unsorted, overlapping, zero-length runs and odd whitespace decode exactly as the reference loop does."""
    shape = (5, 8)
    runs = [(start, min(length, shape[0] * shape[1] - start + 1)) for start, length in runs]
    text = sep.join(f"{s}{sep}{n}" for s, n in runs)
    expected = np.zeros(shape[0] * shape[1], np.uint8)
    for start, length in runs:
        expected[start - 1 : start - 1 + length] = 1
    assert np.array_equal(rle.decode(f" {text} ", shape).ravel(), expected)


@pytest.mark.parametrize("text", ["1 2 x 4", "1.5 2", "1 2e3", "0x10 2"])
def test_decode_rejects_non_integers(text):
    with pytest.raises(ValueError, match="non-integer"):
        rle.decode(text, (40, 40))
    assert rle.validate(text, (40, 40)) == "non-integer value"
