"""Submission CSV (order, empty masks, gzip, validation before rename), Kaggle upload, and scoring."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from carvana_seg.core import rle
from carvana_seg.core.masks import binarize
from carvana_seg.pipeline import cli
from carvana_seg.pipeline.errors import CarvanaSegError, CredentialsError, DataError
from carvana_seg.submission import kaggle_submit
from carvana_seg.submission.score import score
from carvana_seg.submission.writer import validate_submission
from tests.helpers import SUBMISSION_HW, SUBMISSION_IDS, SUBMISSION_IMGS
from tests.helpers import fabricate_shards as fabricate
from tests.helpers import write_submission as write

H, W = SUBMISSION_HW
IDS, IMGS = SUBMISSION_IDS, SUBMISSION_IMGS


@pytest.mark.parametrize("threads", [1, 2])
def test_submission_order_empty_masks_and_gzip(tmp_path, threads):
    raw, manifest, threshold, probs = fabricate(tmp_path)
    rc, out = write(tmp_path, raw, manifest, threshold, threads)
    assert rc == 0
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table.columns) == ["img", "rle_mask"] and list(table["img"]) == IMGS
    assert table["rle_mask"][0] == ""  # empty mask: empty string
    for img, mask in zip(table["img"], table["rle_mask"]):
        np.testing.assert_array_equal(rle.decode(mask, (H, W)), binarize(probs[img[:-4]], 0.5))
    assert not list(tmp_path.glob("*.tmp*"))


def _rows(**changes) -> list[list[str]]:
    rows = [["img", "rle_mask"]] + [[img, "1 3 20 4"] for img in IMGS]
    for k, v in changes.items():
        rows[int(k[1:])] = v
    return rows


@pytest.mark.parametrize(
    "rows, message",
    [
        (_rows(r3=[IMGS[0], ""]), "more than once"),
        (_rows()[:-1], "missing, first " + IMGS[-1]),
        (_rows() + [["ffffffffffff_01.jpg", ""]], "not a test image"),
        (_rows(r2=[IMGS[1], "1 5 4 2"]), "overlapping"),
        (_rows(r2=[IMGS[1], f"{H * W - 2} 4"]), "past the end"),
        ([["img", "mask"]] + _rows()[1:], "header"),
    ],
)
def test_validator_rejects(rows, message):
    with pytest.raises(DataError, match=message):
        validate_submission(rows, IMGS, (H, W))
    assert validate_submission(_rows(), IMGS, (H, W)) == len(IMGS)


def test_invalid_output_is_never_finalised(tmp_path, monkeypatch):
    raw, manifest, threshold, _ = fabricate(tmp_path)
    monkeypatch.setattr(rle, "encode", lambda mask: "5 10 8 2")  # overlapping runs
    rc, out = write(tmp_path, raw, manifest, threshold)
    assert rc == 2 and not out.exists() and not list(tmp_path.glob("*.tmp*"))
    monkeypatch.undo()
    (raw / "sample_submission.csv").write_text("img,rle_mask\n" + "".join(f"{i},1 1\n" for i in reversed(IMGS)))
    rc, out = write(tmp_path, raw, manifest, threshold)
    assert rc == 2 and not out.exists()


class FakeApi:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def competition_submit(self, file_name, message, competition):
        self.calls.append((file_name, message, competition))
        return "Successfully submitted"


def _no_credentials(monkeypatch, tmp_path):
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "nokaggle"))


def test_kaggle_submit_needs_credentials_and_sends_the_hash(tmp_path, monkeypatch, caplog):
    raw, manifest, threshold, _ = fabricate(tmp_path)
    _, sub = write(tmp_path, raw, manifest, threshold)
    api = FakeApi()
    monkeypatch.setattr(kaggle_submit, "make_api", lambda: api)
    _no_credentials(monkeypatch, tmp_path)
    cfg = {"name": "demo", "kaggle": {"message": "try"}}
    with pytest.raises(CredentialsError, match="KAGGLE_USERNAME and KAGGLE_KEY"):
        kaggle_submit.submit(
            sub, "carvana-image-masking-challenge", kaggle_submit.message_for("try", "demo", "abc123"), raw
        )
    assert api.calls == []

    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "s3cr3t-key-value")
    out = tmp_path / "kaggle_submit.json"
    argv = [
        "submit",
        "--cfg",
        json.dumps(cfg),
        "--submission",
        str(sub),
        "--competition",
        "carvana-image-masking-challenge",
        "--config-hash",
        "abc123",
        "--raw",
        str(raw),
        "--out",
        str(out),
    ]
    with caplog.at_level(logging.DEBUG):
        assert cli.main(argv) == 0
    assert api.calls == [(str(sub), "try config=demo hash=abc123", "carvana-image-masking-challenge")]
    record = out.read_text()
    assert json.loads(record)["n_images"] == len(IMGS)
    assert "s3cr3t-key-value" not in record + caplog.text


def test_kaggle_submit_refuses_an_invalid_file(tmp_path, monkeypatch):
    raw, *_ = fabricate(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text("img,rle_mask\n" + "".join(f"{i},\n" for i in IMGS[:-1]))
    api = FakeApi()
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "k")
    with pytest.raises(CarvanaSegError, match="missing"):
        kaggle_submit.submit(bad, "c", "m", raw, api=api)
    assert api.calls == []


def test_score_on_a_known_pair(tmp_path):
    truth = np.zeros((2, H, W), np.uint8)
    pred = np.zeros((2, H, W), np.uint8)
    truth[0, :, :8], pred[0, :, :4] = 1, 1  # Dice 2*48 / (96 + 48) = 2/3
    truth[1, 2:4], pred[1, 2:4] = 1, 1  # identical: 1
    imgs = [IMGS[0], IMGS[3]]  # two different cars
    for name, masks in (("truth.csv", truth), ("sub.csv", pred)):
        (tmp_path / name).write_text("img,rle_mask\n" + "".join(f"{i},{rle.encode(m)}\n" for i, m in zip(imgs, masks)))
    result = score(tmp_path / "sub.csv", tmp_path / "truth.csv", shape=(H, W))
    assert result["n_images"] == 2 and result["mean_dice"] == pytest.approx((2 / 3 + 1) / 2)
    assert result["per_car"] == {IMGS[0][:12]: pytest.approx(2 / 3), IMGS[3][:12]: 1.0}
    out = tmp_path / "score.json"
    assert (
        cli.main(
            [
                "score",
                "--submission",
                str(tmp_path / "sub.csv"),
                "--truth",
                str(tmp_path / "truth.csv"),
                "--size",
                f"{W}x{H}",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads(out.read_text())["mean_dice"] == pytest.approx(result["mean_dice"])
    (tmp_path / "short.csv").write_text("img,rle_mask\n" + f"{imgs[0]},\n")
    with pytest.raises(DataError, match="differ in images"):
        score(tmp_path / "short.csv", tmp_path / "truth.csv", shape=(H, W))
