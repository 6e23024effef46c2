"""validate_raw and the ``validate`` CLI stage on tiny Kaggle layouts built in tmp_path (no network)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from carvana_seg.core.images import read_image, read_mask, write_jpeg, write_mask_gif
from carvana_seg.data.validate import validate_raw
from carvana_seg.pipeline.errors import DataError
from tests.helpers import ROOT as REPO
from tests.helpers import SHARED_SAMPLE as SAMPLE
from tests.helpers import make_raw

W, H = 64, 48


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    return make_raw(tmp_path / "raw")


def ids(raw: Path, split: str = "train") -> list[str]:
    return sorted(name[:-4] for name in os.listdir(raw / split))


def test_valid_layout_summary(raw: Path) -> None:
    full = validate_raw(raw)
    assert (full["n_train"], full["n_test"], full["n_cars_train"], full["n_cars_test"]) == (32, 16, 2, 1)
    assert full["sizes"] == {"train": {"64x48": 32}, "test": {"64x48": 16}}
    assert full["test_complete"] and full["has_metadata"]
    quick = validate_raw(raw, quick=True)
    assert {k: v for k, v in quick.items() if k != "quick"} == {k: v for k, v in full.items() if k != "quick"}


def test_parallel_workers(raw: Path) -> None:
    assert validate_raw(raw, workers=2)["n_train"] == 32
    first = ids(raw)[0]
    (raw / "train_masks" / f"{first}_mask.gif").write_bytes(b"GIF89a garbage")
    with pytest.raises(DataError, match=f"{first}_mask.gif"):
        validate_raw(raw, workers=2)


@pytest.mark.parametrize("quick", [False, True])
def test_truncated_jpeg(raw: Path, quick: bool) -> None:
    path = raw / "train" / f"{ids(raw)[5]}.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=path.name):
        validate_raw(raw, quick=quick)


def test_truncated_test_jpeg(raw: Path) -> None:
    path = raw / "test" / f"{ids(raw, 'test')[4]}.jpg"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match=path.name):
        validate_raw(raw)


@pytest.mark.parametrize("quick", [False, True])
def test_corrupt_gif(raw: Path, quick: bool) -> None:
    first = ids(raw)[0]
    (raw / "train_masks" / f"{first}_mask.gif").write_bytes(b"GIF89a\x00\x01not really a gif")
    with pytest.raises(DataError, match=f"{first}_mask.gif"):
        validate_raw(raw, quick=quick)


def test_missing_mask(raw: Path) -> None:
    image_id = ids(raw)[22]
    (raw / "train_masks" / f"{image_id}_mask.gif").unlink()
    with pytest.raises(DataError, match=f"{image_id}.jpg: no mask .*{image_id}_mask.gif"):
        validate_raw(raw, quick=True)


def test_mask_without_image(raw: Path) -> None:
    image_id = ids(raw)[22]
    (raw / "train" / f"{image_id}.jpg").unlink()
    with pytest.raises(DataError, match=f"{image_id}_mask.gif: mask without a training image"):
        validate_raw(raw, quick=True)


@pytest.mark.parametrize("quick", [False, True])
def test_mask_wrong_size(raw: Path, quick: bool) -> None:
    image_id = ids(raw)[18]
    write_mask_gif(raw / "train_masks" / f"{image_id}_mask.gif", np.zeros((H, W + 2), np.uint8))
    with pytest.raises(DataError, match=rf"{image_id}_mask.gif: mask is 66x48 but .* is 64x48"):
        validate_raw(raw, quick=quick)


def test_mask_bad_value(raw: Path) -> None:
    arr = np.zeros((H, W), np.uint8)
    arr[10:20, 10:20] = 7
    im = Image.fromarray(arr, mode="P")
    im.putpalette([0, 0, 0] * 7 + [255, 255, 255] + [0, 0, 0] * 248)
    first = ids(raw)[0]
    im.save(raw / "train_masks" / f"{first}_mask.gif", optimize=False)  # keep index 7 (no palette remap)
    with pytest.raises(DataError, match=f"{first}_mask.gif.*values"):
        validate_raw(raw)


def test_missing_parts(raw: Path) -> None:
    (raw / "sample_submission.csv").unlink()
    with pytest.raises(DataError, match="sample_submission.csv: required file missing"):
        validate_raw(raw, quick=True)
    os.rename(raw / "test", raw / "tests")
    with pytest.raises(DataError, match="test: required directory missing"):
        validate_raw(raw, quick=True)
    with pytest.raises(DataError, match="raw data directory not found"):
        validate_raw(raw / "nope")


def test_sample_submission_checks(raw: Path, caplog: pytest.LogCaptureFixture) -> None:
    sub = raw / "sample_submission.csv"
    lines = sub.read_text().splitlines()
    sub.write_text("id,mask\n" + "\n".join(lines[1:]) + "\n")
    with pytest.raises(DataError, match="sample_submission.csv: header must be 'img,rle_mask'"):
        validate_raw(raw, quick=True)
    sub.write_text("\n".join(lines[:-1]) + "\n")  # last test image not listed
    with pytest.raises(DataError, match=f"{ids(raw, 'test')[-1]}.jpg is not listed"):
        validate_raw(raw, quick=True)
    sub.write_text("\n".join(lines + [lines[1]]) + "\n")
    with pytest.raises(DataError, match="listed more than once"):
        validate_raw(raw, quick=True)
    # A partial test set (the shared sample: 80 of 100,064) stops validation unless the config says so (data.partial);
    # then it passes with a warning and a flag.
    sub.write_text("\n".join(lines + ["fff000000000_01.jpg,1 1"]) + "\n")
    with pytest.raises(DataError, match=r"sample_submission.csv lists 17 test images, .*holds 16: set data.partial"):
        validate_raw(raw, quick=True)
    with caplog.at_level(logging.WARNING):
        summary = validate_raw(raw, quick=True, partial=True)
    assert not summary["test_complete"] and summary["n_test_listed"] == 17
    assert "partial test set" in caplog.text


def test_train_masks_csv(raw: Path) -> None:
    csv = raw / "train_masks.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DataError, match=f"train_masks.csv: {ids(raw)[-1]}.jpg is not listed"):
        validate_raw(raw, quick=True)
    first = ids(raw)[0]
    csv.write_text("\n".join([lines[0], lines[2], lines[2].replace(ids(raw)[1], first)] + lines[3:]) + "\n")
    validate_raw(raw, quick=True)  # quick mode does not decode the GIFs
    with pytest.raises(DataError, match=f"{first}_mask.gif: mask differs from its row in train_masks.csv"):
        validate_raw(raw)
    csv.unlink()
    with pytest.raises(DataError, match="train_masks.csv: required file missing"):
        validate_raw(raw, quick=True)


def test_empty_test_set_stops_even_when_partial(raw: Path) -> None:
    for f in (raw / "test").iterdir():
        f.unlink()
    for partial in (False, True):
        with pytest.raises(DataError, match=r"test: no test images \(\*.jpg\)"):
            validate_raw(raw, quick=True, partial=partial)


def _drop_view(raw: Path, image_id: str) -> None:
    """Remove one training view everywhere it is listed (photo, mask, train_masks.csv)."""
    (raw / "train" / f"{image_id}.jpg").unlink()
    (raw / "train_masks" / f"{image_id}_mask.gif").unlink()
    csv = raw / "train_masks.csv"
    csv.write_text("".join(line + "\n" for line in csv.read_text().splitlines() if not line.startswith(image_id)))


def _rename_view(raw: Path, image_id: str, new_id: str) -> None:
    """Move one training view to another id (photo, mask, train_masks.csv)."""
    (raw / "train" / f"{image_id}.jpg").rename(raw / "train" / f"{new_id}.jpg")
    (raw / "train_masks" / f"{image_id}_mask.gif").rename(raw / "train_masks" / f"{new_id}_mask.gif")
    csv = raw / "train_masks.csv"
    csv.write_text(csv.read_text().replace(image_id, new_id))


@pytest.mark.parametrize("quick", [False, True])
def test_car_with_15_views_stops_unless_not_strict(raw: Path, quick: bool, caplog: pytest.LogCaptureFixture) -> None:
    victim = ids(raw)[6]
    _drop_view(raw, victim)
    car = victim[:12]
    with pytest.raises(DataError, match=rf"train/{car}_01.jpg: car {car} has 15 views, not 16 \(missing 07\)"):
        validate_raw(raw, quick=quick)
    with caplog.at_level(logging.WARNING):
        assert validate_raw(raw, quick=quick, strict=False)["n_train"] == 31
    assert f"car {car} has 15 views" in caplog.text


def test_view_outside_01_16_stops_unless_not_strict(raw: Path, caplog: pytest.LogCaptureFixture) -> None:
    victim = ids(raw)[15]
    odd = victim[:-2] + "17"
    _rename_view(raw, victim, odd)
    with pytest.raises(DataError, match=rf"train/{odd}.jpg: view 17 is outside 01-16"):
        validate_raw(raw, quick=True)
    with caplog.at_level(logging.WARNING):
        validate_raw(raw, quick=True, strict=False)
    assert "view 17 is outside 01-16" in caplog.text


@pytest.mark.parametrize("quick", [False, True])
@pytest.mark.parametrize("where", ["train", "test", "mask"])
def test_content_not_the_format_its_name_says(raw: Path, quick: bool, where: str) -> None:
    split = "test" if where == "test" else "train"
    victim = ids(raw, split)[3]
    if where == "mask":
        path = raw / "train_masks" / f"{victim}_mask.gif"
        Image.open(path).convert("L").save(path, format="PNG")  # a PNG named .gif
        want, found = "GIF", "PNG"
    else:
        path = raw / split / f"{victim}.jpg"
        Image.open(path).save(path, format="PNG")  # a PNG named .jpg: OpenCV would decode it without a word
        want, found = "JPEG", "PNG"
    with pytest.raises(DataError, match=rf"{path.name}: content is {found}, but the name says {want}"):
        validate_raw(raw, quick=quick)


def test_bad_file_name(raw: Path) -> None:
    write_jpeg(raw / "train" / "car1_01.jpg", np.zeros((H, W, 3), np.uint8))
    with pytest.raises(DataError, match="car1_01.jpg: file name is not"):
        validate_raw(raw, quick=True)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-m", "carvana_seg", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def _configfile(tmp_path: Path) -> Path:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("name: t\ndata: {source: synthetic}\nvariants: [{name: a, width: 64, height: 32}]\n")
    return cfg


def test_cli_writes_summary(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "res" / "validate.json"
    proc = _cli("validate", "--configfile", str(_configfile(tmp_path)), "--raw", str(raw), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["n_train"] == 32
    assert [p.name for p in out.parent.iterdir()] == ["validate.json"]


def test_cli_error_line(raw: Path, tmp_path: Path) -> None:
    image_id = ids(raw)[22]
    (raw / "train_masks" / f"{image_id}_mask.gif").unlink()
    out = tmp_path / "validate.json"
    proc = _cli("validate", "--configfile", str(_configfile(tmp_path)), "--raw", str(raw), "--out", str(out),
                "--quick", "--threads", "2")
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{image_id}_mask.gif" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


@pytest.mark.real
def test_real_sample() -> None:
    if not (SAMPLE / "train").is_dir():
        pytest.skip(f"real Carvana sample not found at {SAMPLE}")
    with pytest.raises(DataError, match="lists 100064 test images, .*holds 80: set data.partial: true"):
        validate_raw(SAMPLE, quick=True, workers=2)  # 80 of the 100,064 test photos: partial, and must say so
    summary = validate_raw(SAMPLE, quick=True, workers=2, partial=True)
    assert summary["n_train"] > 0 and summary["n_train"] == sum(summary["sizes"]["train"].values())
    assert summary["sizes"]["train"] == {"1918x1280": summary["n_train"]}
    for name in sorted(os.listdir(SAMPLE / "train"))[:3]:
        image = read_image(SAMPLE / "train" / name)
        mask = read_mask(SAMPLE / "train_masks" / name.replace(".jpg", "_mask.gif"))
        assert image.shape == (1280, 1918, 3) and mask.shape == (1280, 1918)
        assert set(np.unique(mask).tolist()) == {0, 1}
