"""One portable model file (inference/bundle.py): ``bundle`` -> ``predict --models FILE`` writes the same bytes as
``predict --models results/<name>``, ``serve --models FILE`` answers with the run's masks and provenance, and a
damaged, truncated or foreign file is one clear error. On the reduced demo run (edge refinement on, two variants)."""

from __future__ import annotations

import csv
import gzip
import json
import re
import shutil
import zipfile
from pathlib import Path

import pytest
import requests

from carvana_seg.inference import bundle
from carvana_seg.inference.service import Service
from carvana_seg.pipeline import cli
from carvana_seg.pipeline.errors import DataError

pytestmark = [pytest.mark.slow, pytest.mark.dag, pytest.mark.server]


@pytest.fixture(scope="module")
def packed(demo_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "serve.cseg.zip"
    assert cli.main(["bundle", "--models", str(demo_run), "--out", str(out)]) == 0
    return out


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(bundle.CACHE_ENV, str(tmp_path / "cache"))


def test_predict_from_the_bundle_writes_the_same_bytes_as_from_the_results_tree(demo_run, packed, tmp_path):
    raw = demo_run.parents[1] / "data" / "serve" / "raw"
    photos = sorted((raw / "test").glob("*.jpg"))[:4]
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in photos:
        shutil.copy(p, folder / p.name)
    for models, out in ((demo_run, "from_dir"), (packed, "from_file")):
        argv = ["predict", str(folder), "--models", str(models), "--out", str(tmp_path / out), "--device", "cpu"]
        assert cli.main([*argv, "--backend", "torch"]) == 0
    names = sorted(p.name for p in (tmp_path / "from_dir").iterdir() if not p.name.startswith("."))
    assert len(names) == 2 * len(photos)  # a mask PNG and a cut-out per photo
    assert names == sorted(p.name for p in (tmp_path / "from_file").iterdir() if not p.name.startswith("."))
    for name in names:
        assert (tmp_path / "from_dir" / name).read_bytes() == (tmp_path / "from_file" / name).read_bytes(), name
    with zipfile.ZipFile(packed) as zf:  # the whole ensemble, nothing of the results tree beyond it
        meta = json.loads(zf.read(bundle.META))
        assert sorted(zf.namelist()) == sorted([bundle.META, "threshold.json", *meta["models"]])
    assert meta["trained_on"]["source"] == "synthetic" and meta["edge_refine"]["method"] == "guided"
    assert meta["weights"] and meta["config_hash"] and meta["oof_dice"] is not None


def test_serve_from_the_bundle_gives_the_runs_masks_and_says_what_it_learned(demo_run, packed, start_server):
    url = start_server("--models", str(packed), "--device", "cpu", "--backend", "torch")
    model = requests.get(url + "/v1/model", timeout=10).json()
    assert model["run"] == "serve" and model["trained_on"]["source"] == "synthetic"
    assert model["trained_on"]["network_sizes"] and model["trained_on"]["train_cars"] == 3
    assert model["trained_on"]["notice"] and model["threshold"] == Service(demo_run, "cpu", "torch").info.threshold
    with gzip.open(demo_run / "submission.csv.gz", "rt", newline="") as fh:
        rows = dict(list(csv.reader(fh))[1:])
    with open(Service(demo_run, "cpu", "torch").info.round_dir / "outlier_fixes.csv", newline="") as fh:
        fixed = {r[0] for r in list(csv.reader(fh))[1:]}
    img = next(i for i in sorted(rows) if i not in fixed)
    photo = demo_run.parents[1] / "data" / "serve" / "raw" / "test" / img
    r = requests.post(url + "/v1/cutout", files={"image_file": (img, photo.read_bytes())}, data={"format": "json"})
    assert r.status_code == 200 and r.json()["rle_mask"] == rows[img]


def test_a_damaged_truncated_or_foreign_file_is_one_clear_error(demo_run, packed, tmp_path, capsys):
    photo = min((demo_run.parents[1] / "data" / "serve" / "raw" / "test").glob("*.jpg"))
    data = bytearray(packed.read_bytes())
    with zipfile.ZipFile(packed) as zf:
        info = zf.getinfo(json.loads(zf.read(bundle.META))["models"][0])
    data[info.header_offset + 200 + info.file_size // 2] ^= 0xFF  # one byte inside the first checkpoint
    damaged = tmp_path / "damaged.cseg.zip"
    damaged.write_bytes(bytes(data))
    truncated = tmp_path / "truncated.cseg.zip"
    truncated.write_bytes(packed.read_bytes()[: packed.stat().st_size // 2])
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(foreign, "w") as zf:
        zf.writestr("README.txt", "not a model")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with zipfile.ZipFile(packed) as zf:
        meta = json.loads(zf.read(bundle.META))
    evil = tmp_path / "evil.cseg.zip"  # a member name that would write outside the cache
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr(bundle.META, json.dumps({**meta, "sha256": {**meta["sha256"], "../../escaped.txt": "0"}}))
        zf.writestr("../../escaped.txt", "x")
    expected = {
        damaged: "damaged bundle",
        truncated: "not a complete carvana-seg bundle",
        foreign: "not a carvana-seg bundle (a zip without bundle.json)",
        text: "not a complete carvana-seg bundle",
        evil: "lists unsafe or missing members ['../../escaped.txt']",
    }
    for path, words in expected.items():
        with pytest.raises(DataError, match=re.escape(words)) as err:
            Service(path, "cpu", "torch")
        assert str(path) in str(err.value)
        argv = ["predict", str(photo), "--models", str(path), "--out", str(tmp_path / "out"), "--device", "cpu"]
        assert cli.main(argv) == 2
        assert words in capsys.readouterr().err
    assert not list((tmp_path / "cache").glob("*/serve/test_probs.json"))  # nothing unpacked looks complete
    assert not list(tmp_path.rglob("escaped.txt"))
