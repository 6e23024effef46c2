"""Pseudo-labelling: confidence score, selection, written layout, training with an extra layout, rounds in the DAG."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from carvana_seg.core import images, layout, rle
from carvana_seg.data import folds, resize_cache
from carvana_seg.pipeline import cli, rounds
from carvana_seg.pipeline import config as cfgmod
from carvana_seg.pipeline.errors import ConfigError, DataError
from carvana_seg.pseudo import stage as pseudo
from carvana_seg.training.dataset import ConcatCacheDataset, build_datasets
from tests.helpers import job_counts, make_layout, snakemake, write_config

LO, HI = 0.1, 0.9


def _prob(h: int = 40, w: int = 60, blur: int = 0, value: int = 255) -> np.ndarray:
    """A uint8 probability map: a rectangle 'car' of ``value`` with a ``blur``-pixel ramp (value 128) around it."""
    p = np.zeros((h, w), np.uint8)
    p[10 - blur : 30 + blur, 15 - blur : 45 + blur] = 128 if blur else 0
    p[10:30, 15:45] = value
    return p


# ---- confidence ------------------------------------------------------------------------------------------------


def test_uncertain_share_of_fabricated_maps():
    assert pseudo.uncertain_of_candidates(_prob(), LO, HI) == 0.0  # sharp 0/255 mask: fully confident
    assert pseudo.uncertain_of_candidates(np.zeros((8, 8), np.uint8), LO, HI) == 1.0  # nothing that may be car
    blurred = _prob(blur=2)
    n_car, n_band = 20 * 30, 24 * 34 - 20 * 30
    assert pseudo.uncertain_of_candidates(blurred, LO, HI) == pytest.approx(n_band / (n_car + n_band))
    soft = _prob(value=200)  # 200/255 = 0.78 < hi: every candidate pixel is uncertain
    assert pseudo.uncertain_of_candidates(soft, LO, HI) == 1.0
    assert pseudo.uncertain_of_candidates(soft, LO, 0.7) == 0.0
    # the bounds are exclusive, on the stored uint8 levels (level(0.1) = 26, level(0.9) = 230)
    edge = np.array([[25, 26, 27, 229, 230, 231]], np.uint8)
    assert pseudo.uncertain_of_candidates(edge, LO, HI) == pytest.approx(2 / 4)


# ---- selection -------------------------------------------------------------------------------------------------


def _scores(n_cars: int = 3, n_views: int = 4) -> pd.DataFrame:
    rows = []
    for c in range(n_cars):
        car = f"{c:012x}"
        for v in range(1, n_views + 1):
            rows.append(
                {"id": f"{car}_{v:02d}", "car": car, "view": v, "uncertain_of_candidates": (c * n_views + v) / 100}
            )
    return pd.DataFrame(rows)


def test_select_by_share_and_count_most_confident_first():
    df = _scores()  # 12 images; uncertainty grows with car, then view
    by_share = pseudo.select(df, set(), share=0.25, count=None)
    assert by_share["selected"].sum() == 3  # ceil(0.25 * 12)
    assert sorted(by_share.loc[by_share["selected"], "id"]) == ["000000000000_01", "000000000000_02", "000000000000_03"]
    assert by_share.loc[by_share["rank"] == 1, "id"].item() == "000000000000_01"
    assert pseudo.select(df, set(), share=0.3, count=None)["selected"].sum() == 4  # ceil(3.6)
    by_count = pseudo.select(df, set(), share=0.9, count=5)  # count wins over share
    assert by_count["selected"].sum() == 5
    assert set(by_count.loc[by_count["selected"], "uncertain_of_candidates"]) == {0.01, 0.02, 0.03, 0.04, 0.05}
    assert pseudo.select(df, set(), share=None, count=0)["selected"].sum() == 0


def test_select_never_picks_flagged_cars():
    df = _scores()
    flagged = {"000000000000"}  # the most confident car
    out = pseudo.select(df, flagged, share=None, count=6)
    chosen = out[out["selected"]]
    assert len(chosen) == 6 and "000000000000" not in set(chosen["car"])
    assert (out.loc[out["flagged_car"], "rank"] == 0).all()
    everything = pseudo.select(df, flagged, share=1.0, count=None)  # asks for 12, only 8 eligible
    assert everything["selected"].sum() == 8


def test_flagged_cars_from_outliers_csv(tmp_path):
    (tmp_path / "a.csv").write_text("img,car,view,reasons\nabc_01.jpg,abc,1,area\nabc_02.jpg,abc,2,area\n")
    (tmp_path / "b.csv").write_text("img,reasons\n0123456789ab_05.jpg,holes\n")
    (tmp_path / "empty.csv").write_text("img,car,view,reasons\n")
    assert pseudo.flagged_cars(tmp_path / "a.csv") == {"abc"}
    assert pseudo.flagged_cars(tmp_path / "b.csv") == {"0123456789ab"}
    assert pseudo.flagged_cars(tmp_path / "empty.csv") == set()
    with pytest.raises(DataError):
        pseudo.flagged_cars(tmp_path / "missing.csv")


# ---- the written layout ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pseudo_run(tmp_path_factory) -> dict:
    """Raw layout with 3 test cars, fabricated ensemble shards (one car blurred, one flagged); the pseudo stage run."""
    root = tmp_path_factory.mktemp("pseudo")
    raw = make_layout(root / "raw", n_cars=3, w=64, h=48, n_test_cars=3, seed=3)
    ids, _ = layout.test_ids(raw)
    cars = sorted({layout.car_id(i) for i in ids})
    shard_dir = root / "res" / "test_probs"
    shard_dir.mkdir(parents=True)
    probs = {}
    for i in ids:
        car, v = layout.car_id(i), layout.view(i)
        p = np.zeros((48, 64), np.uint8)
        p[12:36, 16:48] = 250
        if car == cars[1]:  # a blurred car: wide uncertain border
            p[9:39, 12:52] = np.maximum(p[9:39, 12:52], 100)
        p[12 + v % 3, 16] = 120  # view-dependent tie breaker
        probs[i] = p
    shards = []
    for k, start in enumerate(range(0, len(ids), 20)):
        name = f"shard_{k:05d}.npz"
        np.savez_compressed(shard_dir / name, **{i: probs[i] for i in ids[start : start + 20]})
        shards.append({"file": name, "n_images": len(ids[start : start + 20])})
    manifest = root / "res" / "test_probs.json"
    manifest.write_text(json.dumps({"shard_dir": str(shard_dir), "shard_dir_rel": "test_probs", "shards": shards}))
    (root / "res" / "threshold.json").write_text(json.dumps({"threshold": 0.5}))
    (root / "res" / "outliers.csv").write_text(f"img,car,view,reasons\n{cars[2]}_03.jpg,{cars[2]},3,area\n")
    out = root / "data" / "pseudo" / "round2"
    cfg = rounds.pseudo_slice(
        cfgmod.resolve(
            {
                "name": "t",
                "data": {"source": "synthetic"},
                "variants": [{"name": "a", "width": 32, "height": 32}],
                "pseudo_label": {"select_count": 10, "variants": ["a"], "epochs": 3, "lr": 1e-4},
            }
        )
    )
    argv = [
        "pseudo",
        "--cfg",
        cfgmod.to_json(cfg),
        "--manifest",
        str(manifest),
        "--threshold",
        str(root / "res" / "threshold.json"),
        "--outliers",
        str(root / "res" / "outliers.csv"),
        "--raw",
        str(raw),
        "--out-dir",
        str(out),
        "--table",
        str(root / "res" / "round2" / "pseudo_labels.csv"),
        "--summary",
        str(root / "res" / "round2" / "pseudo_labels.json"),
        "--round",
        "2",
        "--threads",
        "1",
    ]
    assert cli.main(argv) == 0
    return {"root": root, "raw": raw, "out": out, "cars": cars, "probs": probs, "argv": argv}


def test_pseudo_stage_selects_confident_unflagged_images(pseudo_run):
    table = pd.read_csv(pseudo_run["root"] / "res" / "round2" / "pseudo_labels.csv", dtype={"car": str})
    cars = pseudo_run["cars"]
    assert len(table) == 48 and table["selected"].sum() == 10
    chosen = table[table["selected"] == 1]
    assert set(chosen["car"]) == {cars[0]}  # the sharp car; the blurred one ranks after it, the flagged is out
    assert (table.loc[table["car"] == cars[2], "selected"] == 0).all()
    assert (table.loc[table["car"] == cars[2], "flagged_car"] == 1).all()
    summary = json.loads((pseudo_run["root"] / "res" / "round2" / "pseudo_labels.json").read_text())
    assert summary["n_selected"] == 10 and summary["n_flagged_cars"] == 1 and summary["n_eligible"] == 32
    assert (
        summary["uncertain_of_candidates"]["selected"]["max"]
        < summary["uncertain_of_candidates"]["eligible_not_selected"]["max"]
    )


def test_the_record_holds_the_selection_settings_the_run_used(pseudo_run):
    """pseudo_labels.json records the selection the stage ran with, from the config (select_count: 10; the rest
    the schema's), and none of the keys its slice does not carry (variants, epochs: set in the config, never null)."""
    summary = json.loads((pseudo_run["root"] / "res" / "round2" / "pseudo_labels.json").read_text())
    assert summary["settings"] == {"select_share": 0.5, "select_count": 10, "confidence_lo": 0.1, "confidence_hi": 0.9}
    assert summary["round"] == 2 and summary["threshold"] == 0.5


def test_the_selection_is_the_same_from_the_slice_and_from_a_whole_section():
    from carvana_seg.settings.pseudo_label import PseudoSelection

    full = cfgmod.resolve(
        {
            "name": "t",
            "data": {"source": "synthetic"},
            "variants": [{"name": "a", "width": 32, "height": 32}],
            "pseudo_label": {"select_share": 0.25, "variants": ["a"], "epochs": 2},
        }
    )
    sliced = rounds.pseudo_slice(full)["pseudo_label"]
    assert set(sliced) == set(PseudoSelection.keys())
    assert PseudoSelection.of(full["pseudo_label"]) == PseudoSelection.of(sliced)
    assert PseudoSelection.of(sliced).select_share == 0.25
    with pytest.raises(ConfigError, match="pseudo_label.*select_count"):
        PseudoSelection.of({"select_share": 0.5})


def test_written_layout_reads_like_training_data(pseudo_run):
    out, raw = pseudo_run["out"], pseudo_run["raw"]
    ids = layout.list_ids(out / layout.TRAIN_DIR)
    assert len(ids) == 10
    link = out / layout.TRAIN_DIR / layout.image_file(ids[0])
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))
    assert link.resolve() == (raw / layout.TEST_DIR / layout.image_file(ids[0])).resolve()
    mask = images.read_mask(out / layout.MASK_DIR / layout.mask_file(ids[0]))
    np.testing.assert_array_equal(mask, pseudo_run["probs"][ids[0]] >= 128)  # binarised at threshold 0.5
    areas = folds.mask_areas(out)  # train_masks.csv + image size, unchanged code
    assert sorted(areas["img"]) == ids
    want = [np.count_nonzero(pseudo_run["probs"][i] >= 128) / (48 * 64) for i in areas["img"]]
    np.testing.assert_allclose(areas["area"], want)
    csv = pd.read_csv(out / layout.TRAIN_MASKS_CSV)
    assert rle.decode(csv["rle_mask"][0], (48, 64)).sum() == mask.sum()
    resize_cache.build(out, ids, (32, 32), pseudo_run["root"] / "cache")
    imgs, masks, cached = resize_cache.load(pseudo_run["root"] / "cache")
    assert cached == ids and imgs.shape == (10, 32, 32, 3) and masks.max() == 255
    assert (pseudo_run["root"] / "cache" / "meta.json").read_text().count("masks_sha256") == 1


def test_rerun_replaces_the_previous_selection(pseudo_run, tmp_path):
    out = tmp_path / "round2"
    for count in (3, 2):
        argv = list(pseudo_run["argv"])
        cfg = json.loads(argv[2])
        cfg["pseudo_label"]["select_count"] = count
        argv[2] = json.dumps(cfg)
        for flag, value in (("--table", tmp_path / "t.csv"), ("--summary", tmp_path / "s.json"), ("--out-dir", out)):
            argv[argv.index(flag) + 1] = str(value)
        assert cli.main(argv) == 0
    assert len(layout.list_ids(out / layout.TRAIN_DIR)) == 2
    assert len(list((out / layout.MASK_DIR).iterdir())) == 2
    assert not list(tmp_path.glob("round2.tmp-*"))


# ---- training with an extra layout -------------------------------------------------------------------------------


def test_extra_layout_adds_training_images_never_validation(pseudo_run, tmp_path):
    raw = pseudo_run["raw"]
    table = folds.assign_folds(folds.mask_areas(raw), k=3, seed=0)
    train_ids = sorted(table.loc[table["fold"] != 0, "img"])
    val_ids = sorted(table.loc[table["fold"] == 0, "img"])
    resize_cache.build(raw, layout.list_ids(raw / layout.TRAIN_DIR), (32, 32), tmp_path / "main")
    extra_ids = layout.list_ids(pseudo_run["out"] / layout.TRAIN_DIR)
    train, val = build_datasets(tmp_path / "main", train_ids, val_ids, None, [pseudo_run["out"]])
    assert isinstance(train, ConcatCacheDataset) and train.size == (32, 32)
    assert len(train) == len(train_ids) + len(extra_ids)
    assert train.datasets[0].ids == train_ids and train.datasets[1].ids == extra_ids
    assert val.ids == val_ids and not set(val.ids) & set(extra_ids)
    x, y = train[len(train_ids)]  # the first pseudo-labelled image, decoded from its linked JPEG
    assert tuple(x.shape) == (3, 32, 32) and str(y.dtype) == "torch.uint8" and int(y.max()) == 255  # 0..1 on device
    # exactly what a resize cache of the layout would hold: one preprocessing, cached or not
    resize_cache.build(pseudo_run["out"], extra_ids, (32, 32), tmp_path / "extra")
    imgs, masks, _ = resize_cache.load(tmp_path / "extra")
    np.testing.assert_array_equal(x.numpy().transpose(1, 2, 0), imgs[0])
    np.testing.assert_array_equal(y[0].numpy(), masks[0])
    plain, _ = build_datasets(tmp_path / "main", train_ids, val_ids)
    assert len(plain) == len(train_ids)
    # an extra layout holding validation images would leak: refused
    with pytest.raises(DataError, match="validation"):
        build_datasets(tmp_path / "main", train_ids, val_ids, None, [raw])
    with pytest.raises(DataError, match="not a training layout"):
        build_datasets(tmp_path / "main", train_ids, val_ids, None, [tmp_path / "main"])


@pytest.mark.slow
def test_train_stage_with_extra_layout_and_init(pseudo_run, tmp_path, caplog):
    raw, out = pseudo_run["raw"], pseudo_run["out"]
    folds.assign_folds(folds.mask_areas(raw), k=3, seed=0).to_csv(tmp_path / "folds.csv", index=False)
    resize_cache.build(raw, layout.list_ids(raw / layout.TRAIN_DIR), (32, 32), tmp_path / "main")
    out4 = tmp_path / "out4"  # the same layout with 4 of its images
    (out4 / layout.TRAIN_DIR).mkdir(parents=True)
    (out4 / layout.MASK_DIR).mkdir()
    for i in layout.list_ids(out / layout.TRAIN_DIR)[:4]:
        os.symlink(
            os.path.realpath(out / layout.TRAIN_DIR / layout.image_file(i)),
            out4 / layout.TRAIN_DIR / layout.image_file(i),
        )
        os.symlink(out / layout.MASK_DIR / layout.mask_file(i), out4 / layout.MASK_DIR / layout.mask_file(i))
    (out4 / layout.TRAIN_MASKS_CSV).write_text("\n".join((out / layout.TRAIN_MASKS_CSV).read_text().splitlines()[:5]))
    cfg = cfgmod.stage_config(
        cfgmod.resolve(
            {
                "name": "t",
                "data": {"source": "synthetic"},
                "folds": {"k": 3},
                "variants": [{"name": "tiny", "width": 32, "height": 32, "batch_size": 8, "epochs": 1, "lr": 1e-3}],
                "train": {"device": "cpu", "num_workers": 0},
            }
        ),
        "train",
        "tiny",
    )

    def train(name: str, *extra: str) -> list[str]:
        caplog.clear()
        argv = [
            "train",
            "--cfg",
            json.dumps(cfg),
            "--variant",
            "tiny",
            "--fold",
            "0",
            "--folds",
            str(tmp_path / "folds.csv"),
            "--cache",
            str(tmp_path / "main"),
            "--out-model",
            str(tmp_path / name / "best.pt"),
            "--out-metrics",
            str(tmp_path / name / "metrics.csv"),
            "--state-dir",
            str(tmp_path / name / "state"),
            "--threads",
            "2",
            *extra,
        ]
        with caplog.at_level("INFO"):
            assert cli.main(argv) == 0
        return [r.getMessage() for r in caplog.records]

    first = train("r1")
    assert any("32 train (0 from extra layouts) / 16 val" in m for m in first), first
    init = str(tmp_path / "r1" / "best.pt")
    second = train("r2", "--extra-layout", str(out), "--init-from", init)
    assert any("42 train (10 from extra layouts) / 16 val" in m for m in second), second
    assert any(m.startswith("initialised from") for m in second), second
    assert (tmp_path / "r2" / "best.pt").is_file()
    # other pseudo-labels in the same state dir: the finished state is not reused
    third = train("r2", "--extra-layout", str(out4), "--init-from", init)
    assert any("different setup (changed: extra)" in m for m in third), third
    assert any("36 train (4 from extra layouts)" in m for m in third), third


# ---- rounds and the DAG -----------------------------------------------------------------------------------------


def _config(**pl) -> dict:
    return cfgmod.resolve(
        {
            "name": "t",
            "data": {"source": "synthetic"},
            "pseudo_label": pl,
            "variants": [
                {"name": "a", "width": 32, "height": 32, "epochs": 7},
                {"name": "b", "width": 64, "height": 32},
            ],
        }
    )


def test_rounds_helpers():
    off = _config(enabled=False)
    assert rounds.last_round(off) == 1 and rounds.suffix(off, 1) == ""
    c = _config(rounds=3, variants=["a"], init="previous", epochs=2)
    assert rounds.last_round(c) == 3 and rounds.round_variants(c, 2) == ["a"]
    assert rounds.latest_round(c, "a", 3) == 3 and rounds.latest_round(c, "b", 3) == 1
    assert rounds.init_round(c, "a", 3) == 2 and rounds.init_round(c, "a", 1) is None
    assert rounds.init_round(_config(init="round1", rounds=3), "a", 3) == 1
    assert rounds.init_round(_config(init="scratch"), "a", 2) is None
    assert rounds.train_slice(c, "a", 1)["variant"]["epochs"] == 7
    assert rounds.train_slice(c, "a", 2)["variant"]["epochs"] == 2
    assert rounds.train_slice(c, "a", 2)["pseudo"] == {"round": 2, "init": "previous"}
    assert rounds.train_slice(c, "a", 2)["variant"]["lr"] == rounds.train_slice(c, "a", 1)["variant"]["lr"]
    slow = _config(rounds=2, lr=1e-5)
    assert (
        rounds.train_slice(slow, "a", 2)["variant"]["lr"] == 1e-5 != rounds.train_slice(slow, "a", 1)["variant"]["lr"]
    )
    assert [rounds.suffix(c, r) for r in (1, 2, 3)] == ["_round1", "_round2", ""]
    assert rounds.round_of_suffix(c, "") == 3 and rounds.round_of_suffix(c, "_round2") == 2
    assert rounds.round_dir("results/t", 2) == "results/t/round2"
    assert rounds.round_of_dir("results/t", "results/t") == 1
    assert set(rounds.pseudo_slice(c)["pseudo_label"]) == {
        "select_share",
        "select_count",
        "confidence_lo",
        "confidence_hi",
    }
    with pytest.raises(ConfigError, match="pseudo_label.variants"):
        _config(variants=["zzz"])
    with pytest.raises(ConfigError, match="confidence_lo"):
        _config(confidence_lo=0.9, confidence_hi=0.5)


@pytest.mark.dag
def test_dry_run_disabled_has_no_round_two_and_three_rounds_plan_round_three(repo_root, tmp_path):
    demo = repo_root / "config" / "demo.yaml"
    base = __import__("yaml").safe_load(demo.read_text())
    n_models = len(base["variants"]) * base["folds"]["k"]
    off_dir, three_dir = tmp_path / "off", tmp_path / "three"
    off_dir.mkdir()
    three_dir.mkdir()
    cfg = write_config(off_dir, demo, pseudo_label={**base["pseudo_label"], "enabled": False})
    res = snakemake(repo_root, off_dir, "-n", "--configfile", str(cfg))
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    counts = job_counts(out)
    assert counts["train"] == n_models and counts["oof"] == n_models, counts
    for rule in ("ensemble", "threshold", "outliers", "submission", "oof_table"):
        assert counts[rule] == 1, (rule, counts)
    assert not {"pseudo_labels", "pseudo_gain"} & set(counts), counts
    assert "round2" not in out and "submission_round1" not in out

    cfg = write_config(three_dir, demo, pseudo_label={**base["pseudo_label"], "rounds": 3, "variants": ["unet_r18_a"]})
    res = snakemake(repo_root, three_dir, "-n", "--configfile", str(cfg))
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    counts = job_counts(out)
    k = base["folds"]["k"]
    assert counts["train"] == n_models + 2 * k and counts["oof"] == n_models + 2 * k, counts
    for rule in ("ensemble", "threshold", "outliers", "submission", "oof_table"):
        assert counts[rule] == 3, (rule, counts)
    assert counts["pseudo_labels"] == 2 and counts["pseudo_gain"] == 1, counts
    assert counts["resize_cache"] == 2, counts  # the training photos at the two sizes; pseudo-labels never cached
    assert counts["score"] == 3, counts  # synthetic: every round's submission is scored
    for path in (
        "results/demo/round3/models/unet_r18_a/fold0/best.pt",
        "results/demo/round3/test_probs.json",
        "data/demo/pseudo/round3/train_masks.csv",
        "results/demo/submission_round2.csv.gz",
        "results/demo/test_score_round1.json",
        "results/demo/pseudo_gain.json",
    ):
        assert path in out, path
    assert "round3/models/unet_r18_b" not in out and "round2/models/unet_r18_b" not in out
