"""``predict`` (mask PNG + RGBA cut-out for any photo) and ``export`` (ONNX, checked with onnxruntime)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from carvana_seg.core.images import read_image, write_jpeg
from carvana_seg.core.masks import binarize
from carvana_seg.data.resize_cache import load_resized
from carvana_seg.inference import maps, predict
from carvana_seg.models import runtime
from carvana_seg.models.model import build_model, save_checkpoint
from carvana_seg.pipeline import cli

VARIANTS = [
    {"name": "a", "arch": "Unet", "encoder": "resnet18", "width": 32, "height": 32, "weight": 1.0},
    {"name": "b", "arch": "Unet", "encoder": "resnet18", "width": 64, "height": 32, "weight": 3.0},
]


def make_results(root: Path, variants: list[dict] = VARIANTS, folds: int = 2, threshold: float | None = 0.5) -> Path:
    """A tiny results directory: random-init ``models/<variant>/fold<k>/best.pt`` and ``threshold.json``."""
    for i, v in enumerate(variants):
        for f in range(folds):
            torch.manual_seed(10 * i + f)
            v = dict(v, encoder_weights=None)
            save_checkpoint(
                root / "models" / v["name"] / f"fold{f}" / "best.pt",
                build_model(v["arch"], v["encoder"], None, v["name"]),
                {"variant": v},
            )
    if threshold is not None:
        (root / "threshold.json").write_text(json.dumps({"threshold": threshold, "dice": 0.9}))
    return root


def photo(path: Path, w: int = 150, h: int = 100) -> Path:
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.full((h, w, 3), 220, np.uint8)
    img[((xx - w / 2) / (w / 3)) ** 2 + ((yy - h / 2) / (h / 4)) ** 2 <= 1] = (40, 60, 150)
    write_jpeg(path, img)
    return path


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread (and do not fight the other test processes for cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    return make_results(tmp_path_factory.mktemp("results"), folds=1)


def test_predict_writes_mask_and_cutout_of_the_photo_size(results, tmp_path, capsys):
    threshold = 0.45
    jpg = photo(tmp_path / "car_01.jpg")
    out = tmp_path / "out"
    assert (
        cli.main(
            [
                "predict",
                str(jpg),
                "--models",
                str(results),
                "--out",
                str(out),
                "--device",
                "cpu",
                "--threshold",
                str(threshold),
            ]
        )
        == 0
    )
    mask = np.asarray(Image.open(out / "car_01_mask.png"))
    cut = Image.open(out / "car_01_cutout.png")
    assert mask.shape == (100, 150) and mask.dtype == np.uint8
    assert set(np.unique(mask).tolist()) <= {0, 255}
    assert cut.mode == "RGBA" and cut.size == (150, 100)
    rgba = np.asarray(cut)
    assert np.array_equal(rgba[..., 3], mask)
    rgb = read_image(jpg)
    assert np.array_equal(rgba[..., :3], rgb)
    # the same numbers as the test ensemble: per-variant flip-TTA, resized back, weighted mean, binarised
    variants = predict.load_ensemble(predict.find_checkpoints(results), torch.device("cpu"))
    cpu = torch.device("cpu")
    _, images = load_resized(jpg, [v.size for v in variants])
    probs = [
        runtime.predict_probs(v.models, runtime.to_tensor(x[None], cpu))[0].numpy() for v, x in zip(variants, images)
    ]
    want = binarize(maps.finalize(rgb.shape[:2], probs, [v.weight for v in variants]), threshold)
    assert np.array_equal(mask == 255, want)
    assert [v.weight for v in variants] == [1.0, 3.0]


def test_predict_threshold_file_and_default(tmp_path, caplog):
    res = make_results(tmp_path / "res", VARIANTS[:1], folds=2, threshold=None)
    assert [len(v.models) for v in predict.load_ensemble(predict.find_checkpoints(res), torch.device("cpu"))] == [2]
    jpg = photo(tmp_path / "x.png", w=70, h=33)  # any size, any format OpenCV reads
    assert predict.resolve_threshold(res, None) == 0.5
    assert "threshold.json not found" in caplog.text
    (res / "threshold.json").write_text(json.dumps({"threshold": 1.0}))
    assert cli.main(["predict", str(jpg), "--models", str(res), "--out", str(tmp_path / "o")]) == 0
    mask = np.asarray(Image.open(tmp_path / "o" / "x_mask.png"))
    assert mask.shape == (33, 70)
    assert predict.resolve_threshold(res, 0.25) == 0.25


def test_predict_uses_the_last_rounds_models_and_threshold(tmp_path):
    """With pseudo-labelling, the final ensemble is each variant's model from the highest round that retrained it
    (round two retrained variant a only) and the last round's threshold: what the final submission used."""
    res = make_results(tmp_path / "res", VARIANTS, folds=1, threshold=0.4)
    make_results(res / "round2", VARIANTS[:1], folds=1, threshold=0.6)
    paths = predict.find_checkpoints(res)
    assert [p.relative_to(res).as_posix() for p in paths] == ["round2/models/a/fold0/best.pt", "models/b/fold0/best.pt"]
    assert predict.resolve_threshold(res, None) == 0.6


def test_predict_unreadable_photo_is_one_error_naming_it(results, tmp_path, capsys):
    good = photo(tmp_path / "good.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(good.read_bytes()[:200])  # truncated JPEG
    code = cli.main(["predict", str(good), str(bad), "--models", str(results), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert [line for line in err if line.startswith("error:")] == [err[-1]]
    assert str(bad) in err[-1]
    assert not (tmp_path / "o").exists()  # nothing written: photos are checked before any work


def test_predict_without_models_is_an_error(tmp_path, capsys):
    jpg = photo(tmp_path / "p.jpg")
    assert cli.main(["predict", str(jpg), "--models", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no trained models" in capsys.readouterr().err


@pytest.mark.slow
def test_export_onnx_matches_pytorch(results, tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    ckpt = results / "models" / "b" / "fold0" / "best.pt"
    out = tmp_path / "model.onnx"
    assert cli.main(["export", "--model", str(ckpt), "--out", str(out), "--check"]) == 0
    printed = capsys.readouterr().out.splitlines()
    # Two image sizes through one graph: the variant's (64x32, batch 2) and 32 px larger each way (batch 1).
    assert [line.split(":")[0] for line in printed] == ["batch 2 at 64x32", "batch 1 at 96x64"]
    assert all(float(line.split("PyTorch)")[1].split()[0]) < 1e-4 for line in printed)
    proto = onnx.load(str(out))
    shape = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in shape] == ["batch", "", "height", "width"] and shape[1].dim_value == 3
    out_shape = proto.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in out_shape] == ["batch", "", "height", "width"]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["carvana_seg.variant"])["name"] == "b"
