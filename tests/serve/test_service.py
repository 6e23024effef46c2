"""The shared inference path and the compositing, without a server: EXIF orientation everywhere (a rotated,
non-square JPEG), the final ensemble's description from a results directory (manifest order, a moved tree, the
round choice), and the cut-out options."""

from __future__ import annotations

import io
import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from carvana_seg.core.images import image_size, image_size_of, read_image
from carvana_seg.data.resize_cache import load_resized
from carvana_seg.inference.service import Service, read_run
from carvana_seg.pipeline import cli
from carvana_seg.serve import compose
from tests.serve.helpers import tiny_run


def rotated_jpeg(path: Path, w: int = 120, h: int = 80, orientation: int = 6) -> np.ndarray:
    """A w x h JPEG whose EXIF says 'rotate 90 degrees clockwise'; returns the photo as displayed (h x w turned)."""
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[:, : w // 3] = (250, 10, 10)  # a red band on the left, a green one on top: the turn is visible
    rgb[: h // 4] = (10, 250, 10)
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(path, "JPEG", exif=exif.tobytes(), quality=95)
    with Image.open(path) as raw:
        return np.asarray(ImageOps.exif_transpose(raw).convert("RGB"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return tiny_run(tmp_path_factory.mktemp("svc") / "tiny", threshold=0.5)


def test_exif_rotation_is_honoured_by_every_reader(tmp_path):
    shown = rotated_jpeg(tmp_path / "phone.jpg")
    assert shown.shape == (120, 80, 3)
    assert image_size(tmp_path / "phone.jpg") == (80, 120)  # (width, height) as displayed, not Pillow's raw size
    assert image_size_of((tmp_path / "phone.jpg").read_bytes()) == (80, 120)
    rgb = read_image(tmp_path / "phone.jpg")
    assert rgb.shape == shown.shape and np.abs(rgb.astype(int) - shown).mean() < 3
    shape, [small] = load_resized(tmp_path / "phone.jpg", [(40, 60)])
    assert shape == (120, 80) and small.shape == (60, 40, 3)
    want = cv2.resize(shown, (40, 60), interpolation=cv2.INTER_AREA)  # the network sees the displayed photo
    assert np.abs(small.astype(int) - want).mean() < 4
    assert (shown[:30, :50, 0] > 200).all()  # the raw left band is on top once turned: a raw decode would fail


def test_rotated_photo_gets_a_mask_of_its_displayed_shape(run_dir, tmp_path):
    rotated_jpeg(tmp_path / "phone.jpg")
    rgb, mask = Service(run_dir, "cpu", "torch").mask(tmp_path / "phone.jpg")
    assert rgb.shape[:2] == mask.shape == (120, 80)
    assert (
        cli.main(
            [
                "predict",
                str(tmp_path / "phone.jpg"),
                "--models",
                str(run_dir),
                "--out",
                str(tmp_path / "o"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert Image.open(tmp_path / "o" / "phone_mask.png").size == (80, 120)
    assert Image.open(tmp_path / "o" / "phone_cutout.png").size == (80, 120)


def test_service_reads_the_manifest_in_order_and_finds_a_moved_tree(run_dir, tmp_path):
    info = read_run(run_dir)
    assert info.models == [run_dir / "models" / "a" / "fold0" / "best.pt"] and info.config_hash == "cafe01"
    moved = tmp_path / "elsewhere" / "tiny"
    shutil.copytree(run_dir, moved)
    manifest = json.loads((moved / "test_probs.json").read_text())
    manifest["models"] = ["results/tiny/models/a/fold0/best.pt"]  # as the run's working directory wrote it
    (moved / "test_probs.json").write_text(json.dumps(manifest))
    assert read_run(moved).models == [moved / "models" / "a" / "fold0" / "best.pt"]
    (moved / "round2").mkdir()
    (moved / "round2" / "test_probs.json").write_text(json.dumps(manifest))
    with pytest.raises(Exception, match="threshold.json: missing"):
        read_run(moved)  # the last round is the one with a manifest: its threshold must be there
    with pytest.raises(Exception, match="results directory not found"):
        read_run(tmp_path / "nope")


def test_batch_tool_skips_finished_photos_and_redoes_on_new_options(run_dir, tmp_path, caplog):
    photos = tmp_path / "in"
    photos.mkdir()
    for i in range(2):
        Image.fromarray(np.full((48, 64, 3), 40 * i, np.uint8)).save(photos / f"p{i}.jpg")
    args = ["predict", str(photos), "--models", str(run_dir), "--out", str(tmp_path / "o"), "--device", "cpu"]
    assert cli.main(args) == 0
    first = (tmp_path / "o" / "p0_cutout.png").stat().st_mtime_ns
    caplog.clear()
    caplog.set_level(logging.INFO)
    assert cli.main(args) == 0
    assert "2 of 2 photos already done" in caplog.text
    assert (tmp_path / "o" / "p0_cutout.png").stat().st_mtime_ns == first
    assert cli.main([*args, "--bg-color", "white", "--format", "jpg"]) == 0
    assert Image.open(tmp_path / "o" / "p0_cutout.jpg").mode == "RGB"
    assert not list((tmp_path / "o").glob("*.tmp*"))


def test_colours_margins_cover_and_bad_options():
    assert compose.parse_color("#fff") == (255, 255, 255, 255)
    assert compose.parse_color("81d4fa80") == (0x81, 0xD4, 0xFA, 0x80)
    assert compose.parse_color("Red") == (255, 0, 0, 255) and compose.parse_color("transparent") is None
    assert compose.margin_px((100, 200), "10%") == 20 and compose.margin_px((100, 200), "7px") == 7
    bg = np.arange(30 * 40 * 3, dtype=np.uint8).reshape(30, 40, 3)
    assert compose.cover(bg, (100, 50)).shape == (100, 50, 3)
    mask = np.zeros((50, 60), bool)
    mask[10:20, 30:40] = True
    image, alpha = compose.render(np.zeros((50, 60, 3), np.uint8), mask, compose.Options(crop=True, crop_margin="2"))
    assert alpha.shape == (14, 14) and image.shape == (14, 14, 4)
    for bad in ({"format": "gif"}, {"channels": "rgb"}, {"bg_color": "#12"}, {"crop_margin": "60%"}):
        with pytest.raises(compose.OptionError, match=next(iter(bad)).replace("_", "_")):
            compose.Options(**bad).validate()
    body, wh = compose.encode(np.zeros((50, 60, 3), np.uint8), mask, compose.Options(format="png", bg_color="000"))
    assert wh == (60, 50) and Image.open(io.BytesIO(body)).mode == "RGB"
