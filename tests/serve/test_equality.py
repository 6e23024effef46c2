"""One inference path: the served mask, ``predict``'s mask and the run's own submission row are the same mask.

For every test photo of a reduced demo run (edge refinement on) whose car the outlier check did not fix, the
service's RLE equals the photo's row of ``submission.csv.gz``, bit for bit; ``predict`` writes that mask, and
the HTTP API returns it. The real-sample variant runs the same DAG on ../shared/carvana-sample's photos."""

from __future__ import annotations

import csv
import gzip
import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from carvana_seg.core import rle
from carvana_seg.inference.service import Service
from carvana_seg.pipeline import cli
from tests.serve.helpers import multipart, run_reduced

pytestmark = [pytest.mark.slow, pytest.mark.dag, pytest.mark.server]


def submission_rows(results: Path) -> dict[str, str]:
    with gzip.open(results / "submission.csv.gz", "rt", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["img", "rle_mask"]
    return dict(rows[1:])


def unfixed(results: Path, service: Service) -> list[str]:
    """The test images whose submission row is the binarised ensemble (no outlier fix in the final round)."""
    with open(service.info.round_dir / "outlier_fixes.csv", newline="") as fh:
        fixed = {r[0] for r in list(csv.reader(fh))[1:]}
    return [img for img in submission_rows(results) if img not in fixed]


def assert_service_equals_submission(results: Path, raw: Path, min_images: int) -> Service:
    service = Service(results, "cpu", "torch")
    assert service.info.edge_refine.method == "guided"
    rows, images = submission_rows(results), unfixed(results, service)
    assert len(images) >= min_images, f"only {len(images)} unfixed test photos to compare"
    differ = [img for img in images if rle.encode(service.mask(raw / "test" / img)[1]) != rows[img]]
    assert differ == [], f"{len(differ)} of {len(images)} served masks differ from submission.csv.gz: {differ[:5]}"
    return service


def test_served_predicted_and_submitted_masks_are_identical(demo_run, start_server, tmp_path):
    raw = demo_run.parents[1] / "data" / "serve" / "raw"
    service = assert_service_equals_submission(demo_run, raw, min_images=16)
    rows, images = submission_rows(demo_run), unfixed(demo_run, service)
    # predict (the batch tool) on a folder: the same masks
    folder = tmp_path / "photos"
    folder.mkdir()
    for img in images[:4]:
        (folder / img).write_bytes((raw / "test" / img).read_bytes())
    assert (
        cli.main(["predict", str(folder), "--models", str(demo_run), "--out", str(tmp_path / "out"), "--device", "cpu"])
        == 0
    )
    for img in images[:4]:
        mask = np.asarray(Image.open(tmp_path / "out" / f"{Path(img).stem}_mask.png")) == 255
        assert rle.encode(mask) == rows[img], img
    # the HTTP API: the same masks (format=json carries the RLE)
    url = start_server("--models", str(demo_run), "--device", "cpu", "--backend", "torch")
    for img in images[:2]:
        body, ctype = multipart({"format": "json"}, {"image_file": (img, (raw / "test" / img).read_bytes())})
        req = urllib.request.Request(url + "/v1/cutout", data=body, headers={"Content-Type": ctype})
        with urllib.request.urlopen(req, timeout=60) as r:
            assert json.loads(r.read())["rle_mask"] == rows[img], img


@pytest.mark.real
def test_served_masks_equal_the_submission_on_the_real_sample(real_sample, tmp_path):
    """The real photos (1918x1280, the sample's test cars), one tiny variant, edge refinement on. One fold of the
    three is trained (``folds.use``): the assertion is about the test photos, which every fold's model predicts the
    same way, and one fold's OOF still feeds the threshold search (a third of the full-size OOF maps to refine)."""
    override = {
        "name": "serve_real",
        "data": {"source": "local", "path": str(real_sample), "partial": True},
        "folds": {"use": [0]},
        "variants": [
            {
                "name": "unet_r18_a",
                "arch": "Unet",
                "encoder": "resnet18",
                "encoder_weights": None,
                "width": 64,
                "height": 64,
                "batch_size": 8,
                "epochs": 1,
                "lr": 5.0e-4,
            }
        ],
        "predict": REAL_PREDICT,
        "pseudo_label": {"enabled": False},
    }
    results = run_reduced(tmp_path, override)
    service = Service(results, "cpu", "torch")
    assert service.info.edge_refine.method == "guided"
    rows, images = submission_rows(results), unfixed(results, service)
    assert len(images) >= 16
    differ = [img for img in images if rle.encode(service.mask(Path(real_sample) / "test" / img)[1]) != rows[img]]
    assert differ == [], f"{len(differ)} of {len(images)} served masks differ: {differ[:5]}"


REAL_PREDICT = {"edge_refine": {"method": "guided", "radius": 8, "eps": 1.0e-3, "scale": 4, "band": 0.05}}
