"""The ``oof`` and ``oof-table`` stages: flip-TTA OOF probabilities at original size, per-image Dice, aggregation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from carvana_seg.core import layout
from carvana_seg.core.images import read_mask
from carvana_seg.core.metrics import dice
from carvana_seg.data import folds, resize_cache
from carvana_seg.inference.oof import DICE_COLUMNS, predict_rows, to_original
from carvana_seg.inference.oof_table import aggregate, summary
from carvana_seg.models.model import build_model, save_checkpoint
from carvana_seg.pipeline import cli
from carvana_seg.pipeline import config as cfgmod
from carvana_seg.pipeline.errors import DataError
from tests.helpers import make_layout

W, H = 96, 64  # "original" photo size; the network runs at 64x64


def _config() -> dict:
    return cfgmod.resolve(
        {
            "name": "tiny",
            "data": {"source": "synthetic"},
            "folds": {"k": 3},
            "variants": [{"name": "tiny", "encoder": "resnet18", "width": 64, "height": 64, "epochs": 1}],
            "predict": {"batch_size": 4, "workers": 2},
        }
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny raw layout, folds.csv, a 64x64 cache and an (untrained, seeded) checkpoint of variant 'tiny'."""
    root = tmp_path_factory.mktemp("oof")
    raw = make_layout(root / "raw", n_cars=3, w=W, h=H, n_test_cars=1, seed=2)
    folds.assign_folds(folds.mask_areas(raw), k=3, seed=0).to_csv(root / "folds.csv", index=False)
    resize_cache.build(raw, layout.list_ids(raw / layout.TRAIN_DIR), (64, 64), root / "cache")
    cfg = cfgmod.stage_config(_config(), "train", "tiny")
    torch.manual_seed(0)
    v = cfg["variant"]
    save_checkpoint(root / "best.pt", build_model(v["arch"], v["encoder"], None, v["name"]), cfg, epoch=1, val_dice=0.0)
    return {"root": root, "raw": raw, "folds": root / "folds.csv", "cache": root / "cache", "model": root / "best.pt"}


class Ramp(nn.Module):
    """A deliberately asymmetric 'model': logits rise from -4 (left) to +4 (right), whatever the image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        return torch.linspace(-4.0, 4.0, w).expand(n, 1, h, w) + 0.0 * x[:, :1].float()


def test_tta_averages_the_flipped_prediction(setup: dict[str, Path]) -> None:
    images, _, _ = resize_cache.load(setup["cache"])
    rows = [0, 1, 2, 3, 4]
    cpu = torch.device("cpu")
    plain = dict(predict_rows([Ramp()], images, rows, cpu, batch_size=2, tta_hflip=False))
    tta = dict(predict_rows([Ramp()], images, rows, cpu, batch_size=2, tta_hflip=True))
    assert sorted(tta) == rows and tta[0].shape == (64, 64) and tta[0].dtype == np.float32
    assert plain[0][:, 0].max() < 0.05 and plain[0][:, -1].min() > 0.95
    np.testing.assert_allclose(tta[0], 0.5, atol=1e-6)  # sigmoid(r) and sigmoid(-r) average to 1/2
    # With a real network: TTA = mean of p(x) and the mirrored p(mirror(x)).
    from carvana_seg.models.model import load_model

    model, _ = load_model(setup["model"])
    got = dict(predict_rows([model], images, rows, cpu, batch_size=4, tta_hflip=True))
    x = torch.from_numpy(np.ascontiguousarray(images[rows])).permute(0, 3, 1, 2)
    with torch.no_grad():
        expect = (torch.sigmoid(model(x)) + torch.sigmoid(model(x.flip(-1))).flip(-1))[:, 0] / 2
    for i, r in enumerate(rows):
        np.testing.assert_allclose(got[r], expect[i].numpy(), atol=1e-5)


def test_to_original_resizes_and_quantises() -> None:
    p = np.full((4, 6), 0.2, np.float32)
    p[:, 3:] = 1.0
    out = to_original(p, (12, 8))
    assert out.shape == (8, 12) and out.dtype == np.uint8
    assert out[0, 0] == 51 and out[0, -1] == 255 and 51 < out[0, 6] < 255  # round(0.2 * 255), bilinear edge


def test_oof_stage_writes_fold_predictions_and_dice(setup: dict[str, Path], tmp_path: Path) -> None:
    cfg = cfgmod.stage_config(_config(), "oof", "tiny")
    out, out_dice = tmp_path / "oof" / "fold1.npz", tmp_path / "oof" / "fold1_dice.csv"
    argv = [
        "oof",
        "--cfg",
        json.dumps(cfg),
        "--variant",
        "tiny",
        "--fold",
        "1",
        "--model",
        str(setup["model"]),
        "--folds",
        str(setup["folds"]),
        "--cache",
        str(setup["cache"]),
        "--raw",
        str(setup["raw"]),
        "--out",
        str(out),
        "--out-dice",
        str(out_dice),
        "--threads",
        "2",
    ]
    assert cli.main(argv) == 0
    table = pd.read_csv(setup["folds"], dtype={"img": str, "car": str})
    val_ids = sorted(table.loc[table["fold"] == 1, "img"])
    with np.load(out) as npz:
        assert sorted(npz.files) == val_ids
        probs = {k: npz[k] for k in npz.files}
    assert all(p.dtype == np.uint8 and p.shape == (H, W) for p in probs.values())
    assert sorted(p.name for p in out.parent.iterdir()) == ["fold1.npz", "fold1_dice.csv"]  # no tmp left
    scores = pd.read_csv(out_dice, dtype={"img": str, "car": str})
    assert list(scores.columns) == DICE_COLUMNS and scores["img"].tolist() == val_ids
    assert (scores["fold"] == 1).all() and (scores["variant"] == "tiny").all()
    assert scores["car"].tolist() == [layout.car_id(i) for i in val_ids]
    i = val_ids[0]
    truth = read_mask(setup["raw"] / layout.MASK_DIR / layout.mask_file(i))
    assert scores.loc[0, "dice"] == pytest.approx(dice(probs[i] >= 128, truth))
    # A checkpoint of another variant is refused.
    assert cli.main([*argv[:4], "other", *argv[5:]]) == 2


def test_oof_table_concatenates_and_summarises(tmp_path: Path) -> None:
    def table(variant: str, fold: int, scores: list[float]) -> Path:
        ids = [f"{fold:012x}_{v:02d}" for v in range(1, len(scores) + 1)]
        df = pd.DataFrame(
            {"img": ids, "car": [layout.car_id(i) for i in ids], "fold": fold, "variant": variant, "dice": scores}
        )
        path = tmp_path / f"{variant}_{fold}.csv"
        df.to_csv(path, index=False)
        return path

    inputs = [table("a", 0, [0.9, 0.8]), table("a", 1, [1.0]), table("b", 0, [0.5, 0.7]), table("b", 1, [0.6])]
    out = tmp_path / "oof_dice.csv"
    assert cli.main(["oof-table", "--inputs", *map(str, inputs), "--out", str(out)]) == 0
    combined = pd.read_csv(out, dtype={"img": str, "car": str})
    assert list(combined.columns) == DICE_COLUMNS and len(combined) == 6
    s = summary(combined)
    assert s.loc["a", "fold0"] == pytest.approx(0.85) and s.loc["a", "all"] == pytest.approx(0.9)
    assert s.loc["b", "fold1"] == pytest.approx(0.6) and s.loc["b", "images"] == 3
    with pytest.raises(DataError, match="appear twice"):
        aggregate([inputs[0], inputs[0]], tmp_path / "dup.csv")
    with pytest.raises(DataError, match="not found"):
        aggregate([tmp_path / "missing.csv"], tmp_path / "x.csv")
