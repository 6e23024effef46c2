"""Loss, augmentation, dataset and the resumable ``train`` stage on a tiny fabricated cache (CPU, seconds)."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from carvana_seg.core import layout
from carvana_seg.data import resize_cache
from carvana_seg.models.model import load_model
from carvana_seg.pipeline import cli
from carvana_seg.pipeline import config as cfgmod
from carvana_seg.pipeline.errors import DataError
from carvana_seg.settings.train import Augment
from carvana_seg.training import augment
from carvana_seg.training.dataset import CacheDataset, read_folds, split_ids
from carvana_seg.training.losses import BceDiceLoss, boundary_band
from tests.helpers import ROOT, settings, tiny_config, train_cmd

# ---- loss -------------------------------------------------------------------------------------------------------


def _square(size: int = 32, lo: int = 8, hi: int = 24) -> torch.Tensor:
    t = torch.zeros(1, 1, size, size)
    t[..., lo:hi, lo:hi] = 1.0
    return t


def test_boundary_band_is_dilation_minus_erosion() -> None:
    band = boundary_band(_square(), width=2)[0, 0]
    assert band.sum().item() == 20 * 20 - 12 * 12  # (16 + 2*2)^2 - (16 - 2*2)^2
    assert band[8, 8] and band[6, 6] and band[9, 16]  # corner, two px outside, second px inside
    assert not band[16, 16] and not band[0, 0] and not band[10, 16] and not band[5, 16]  # inside / outside the band
    full = torch.ones(1, 1, 16, 16)
    assert not boundary_band(full, 3).any()  # the image border is no edge
    assert not boundary_band(_square(), 0).any()


def test_boundary_pixels_weigh_more() -> None:
    target = _square()
    w = BceDiceLoss(boundary_width=2, boundary_weight=4.0).pixel_weights(target)
    assert set(w.unique().tolist()) == {1.0, 4.0}
    # Same number of wrong pixels, on the edge vs deep outside: the edge errors cost more only with the weighting.
    edge_wrong, far_wrong = target.clone(), target.clone()
    edge_wrong[..., 7, 8:24] = 1.0  # a row just outside the square
    far_wrong[..., 0, 8:24] = 1.0  # a row at the image border
    logits = lambda t: (t * 2 - 1) * 6  # noqa: E731
    plain, weighted = BceDiceLoss(dice_weight=0, boundary_weight=1.0), BceDiceLoss(dice_weight=0, boundary_weight=4.0)
    assert plain(logits(edge_wrong), target) == pytest.approx(plain(logits(far_wrong), target).item(), rel=1e-5)
    assert weighted(logits(edge_wrong), target) > 1.5 * weighted(logits(far_wrong), target)


def test_loss_perfect_prediction_is_low_and_gradients_flow() -> None:
    target = _square()
    loss = BceDiceLoss()
    assert loss((target * 2 - 1) * 20, target).item() < 1e-3
    bad = loss(-(target * 2 - 1) * 5, target).item()
    assert bad > 1.0
    soft = target * 0.7  # soft coverage targets are accepted
    logits = torch.zeros_like(target, requires_grad=True)
    value = loss(logits, soft)
    value.backward()
    assert torch.isfinite(value) and logits.grad is not None
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


# ---- augmentation -----------------------------------------------------------------------------------------------


def test_hflip_keeps_image_and_mask_aligned() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)
    mask = rng.integers(0, 255, (32, 48), dtype=np.uint8)
    aug = augment.build_augment(settings(Augment, probability=0.0, hflip=1.0), seed=0)
    img2, mask2 = augment.apply(aug, image, mask)
    np.testing.assert_array_equal(img2, image[:, ::-1])
    np.testing.assert_array_equal(mask2, mask[:, ::-1])


def test_affine_moves_mask_with_image_and_keeps_coverage() -> None:
    mask = np.zeros((64, 96), np.uint8)
    mask[16:48, 24:72] = 255
    image = np.repeat(mask[..., None], 3, axis=2)  # the image *is* the mask: any misalignment shows
    aug = augment.build_augment(
        settings(Augment, probability=1.0, hue_shift=0, sat_shift=0, val_shift=0, shift=0.1, scale=0.2, hflip=0.5),
        seed=3,
    )
    moved = 0
    for _ in range(8):
        img2, mask2 = augment.apply(aug, image, mask)
        assert mask2.dtype == np.uint8 and mask2.shape == mask.shape
        assert np.abs(img2[..., 0].astype(int) - mask2.astype(int)).max() <= 1
        moved += int(not np.array_equal(mask2, mask))
        assert 0.5 * mask.sum() < mask2.astype(float).sum() < 1.6 * mask.sum()
    assert moved >= 6
    values = np.unique(mask2)
    assert values.min() == 0 and values.max() >= 250 and len(values) > 2  # linear: partial coverage at the edge


def _box_sizes(aug, mask: np.ndarray, n: int = 40) -> np.ndarray:
    """(width, height) of the warped box in ``n`` draws."""
    out = []
    for _ in range(n):
        m = augment.apply(aug, np.repeat(mask[..., None], 3, axis=2), mask)[1] >= 128
        cols, rows = np.flatnonzero(m.any(0)), np.flatnonzero(m.any(1))
        out.append((cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1))
    return np.array(out, float)


def test_aspect_stretches_the_width_alone_and_zero_keeps_the_seeds_draws() -> None:
    mask = np.zeros((96, 192), np.uint8)
    mask[32:64, 64:128] = 255  # 64 x 32 px: 0.5 * (1 + 0.3) of the width stays inside the image
    common = {"probability": 1.0, "hue_shift": 0, "sat_shift": 0, "val_shift": 0, "shift": 0.0, "hflip": 0.0}
    plain = _box_sizes(augment.build_augment(settings(Augment, scale=0.05, aspect=0.0, **common), seed=1), mask)
    wide = _box_sizes(augment.build_augment(settings(Augment, scale=0.05, aspect=0.3, **common), seed=1), mask)
    assert plain[:, 0].min() >= 64 * 0.95 - 2 and plain[:, 0].max() <= 64 * 1.05 + 2  # within the common scale
    assert wide[:, 0].max() > 64 * 1.15 and wide[:, 0].min() < 64 * 0.85  # the width alone goes further
    assert wide[:, 1].min() >= 32 * 0.95 - 2 and wide[:, 1].max() <= 32 * 1.05 + 2  # the height does not
    seed = settings(Augment, scale=0.05, **common)  # aspect's default, 0: the seed's transform, draw for draw
    np.testing.assert_array_equal(_box_sizes(augment.build_augment(seed, seed=1), mask), plain)


def test_colour_shift_changes_image_not_mask() -> None:
    image = np.full((16, 16, 3), (180, 40, 40), np.uint8)
    mask = np.full((16, 16), 255, np.uint8)
    aug = augment.build_augment(settings(Augment, probability=1.0, shift=0, scale=0, hflip=0), seed=0)
    changed = sum(not np.array_equal(augment.apply(aug, image, mask)[0], image) for _ in range(5))
    assert changed >= 4
    assert np.array_equal(augment.apply(aug, image, mask)[1], mask)


# ---- dataset ----------------------------------------------------------------------------------------------------


def test_dataset_shapes_and_split(tiny_cache: dict[str, Path]) -> None:
    table = read_folds(tiny_cache["folds"])
    train_ids, val_ids = split_ids(table, 0)
    assert not set(map(layout.car_id, train_ids)) & set(map(layout.car_id, val_ids))
    assert len(train_ids) + len(val_ids) == len(table) and len(val_ids) == 16
    ds = CacheDataset(tiny_cache["cache"], val_ids)
    x, y = ds[3]
    assert x.dtype == torch.uint8 and tuple(x.shape) == (3, 64, 64)
    assert y.dtype == torch.uint8 and tuple(y.shape) == (1, 64, 64)  # coverage 0..255; 0..1 on the device
    assert 0 < y.float().mean() < 255
    images, masks, ids = resize_cache.load(tiny_cache["cache"])
    k = ids.index(val_ids[3])
    np.testing.assert_array_equal(x.permute(1, 2, 0).numpy(), images[k])
    np.testing.assert_array_equal(y[0].numpy(), masks[k])


# ---- the train stage --------------------------------------------------------------------------------------------


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


@pytest.mark.slow
def test_train_resumes_after_a_kill_and_restarts_on_config_change(
    tiny_cache: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = cfgmod.stage_config(tiny_config(), "train", "tiny")
    out = tmp_path / "run"
    # Invocation 1 (in-process, to save an interpreter start) is "killed" after epoch 1: only the state remains.
    caplog.set_level(logging.INFO)  # what the CLI's logging.basicConfig sets outside pytest
    assert cli.main(train_cmd(tiny_cache, cfg, out, "--max-epochs-this-run", "1")[3:]) == 2
    assert "stopped after 1 epoch" in capsys.readouterr().err
    assert not (out / "best.pt").exists() and not (out / "metrics.csv").exists()
    state = torch.load(out / "state" / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and len(state["rows"]) == 1
    # Invocation 2, a fresh process: the same command resumes at epoch 2 and keeps epoch 1's row from invocation 1.
    second = _run(train_cmd(tiny_cache, cfg, out))
    assert second.returncode == 0, second.stderr
    # Snakemake's `> {log}` truncates the job's log on a rerun: the stage replays the earlier run's lines first.
    earlier, _, resumed = second.stderr.partition("--- resumed run ---")
    assert "resuming from epoch 2" in resumed and "epoch 1/2:" not in resumed and "epoch 2/2:" in resumed, second.stderr
    assert "--- earlier run(s) of this job" in earlier and "epoch 1/2:" in earlier
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics.columns) == [
        "epoch",
        "train_loss",
        "val_loss",
        "val_dice",
        "lr",
        "seconds",
        "images_per_s",
        "data_share",
    ]
    assert metrics["epoch"].tolist() == [1, 2]
    assert metrics.loc[0, "seconds"] == pytest.approx(state["rows"][0]["seconds"])  # the first run's epoch
    assert metrics["val_dice"].between(0, 1).all() and np.isfinite(metrics["train_loss"]).all()
    model, saved_cfg = load_model(out / "best.pt")
    assert saved_cfg == cfg and saved_cfg["variant"]["name"] == "tiny"
    ckpt = torch.load(out / "best.pt", weights_only=True)
    assert ckpt["val_dice"] == pytest.approx(metrics["val_dice"].max())
    assert ckpt["epoch"] == int(metrics.loc[metrics["val_dice"].idxmax(), "epoch"])
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8)).shape == (1, 1, 32, 32)
    # Outputs lost, state finished: the same command rewrites them from the state, without training.
    (out / "best.pt").unlink()
    (out / "metrics.csv").unlink()
    caplog.clear()
    assert cli.main(train_cmd(tiny_cache, cfg, out)[3:]) == 0  # in-process: faster
    assert "holds a finished run" in caplog.text and "epoch 1/2:" not in caplog.text
    pd.testing.assert_frame_equal(pd.read_csv(out / "metrics.csv"), metrics)
    caplog.clear()
    # A changed config or a rebuilt cache does not resume: it starts from epoch 1 and names what changed.
    # (the cache's content: one mask pixel flipped; a copy with other mtimes, as a storage provider makes, resumes)
    masks = tiny_cache["cache32"] / "masks.npy"
    original = masks.read_bytes()
    masks.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    changed = cfgmod.stage_config(tiny_config(loss={"boundary_weight": 5.0}), "train", "tiny")
    try:
        assert cli.main(train_cmd(tiny_cache, changed, out, "--max-epochs-this-run", "1")[3:]) == 2
    finally:
        masks.write_bytes(original)
    log = caplog.text
    assert "starting from epoch 1" in log and "train.loss.boundary_weight" in log and "cache" in log
    assert "resuming" not in log
    assert torch.load(out / "state" / "last.pt", weights_only=True)["epoch"] == 1
    assert "epoch 2/2:" not in (out / "state" / "train.log").read_text()  # a fresh start forgets the old run's log


def test_nonfinite_losses_stop_training_with_a_clear_error(
    tiny_cache: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = cfgmod.stage_config(tiny_config(max_nonfinite_steps=2), "train", "tiny")
    cfg["variant"]["lr"] = 1e30  # the first step blows the weights up, the following losses are NaN
    rc = cli.main(train_cmd(tiny_cache, cfg, tmp_path)[3:])
    assert rc == 2
    err = capsys.readouterr().err
    assert "consecutive non-finite losses" in err and "train.max_nonfinite_steps=2" in err
    assert not (tmp_path / "best.pt").exists()


class _Payload:
    """Stands for any pickled object: unpickling it could run code, so a checkpoint holding one is refused."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_a_checkpoint_carrying_a_pickled_object_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from carvana_seg.models.model import build_model, load_checkpoint

    variant = {"name": "tiny", "arch": "Unet", "encoder": "resnet18", "width": 32, "height": 32, "weight": 1.0}
    state = build_model("Unet", "resnet18", None, "tiny").state_dict()
    good, bad = tmp_path / "good.pt", tmp_path / "evil" / "models" / "tiny" / "fold0" / "best.pt"
    torch.save({"state_dict": state, "config": {"variant": variant}, "epoch": 1}, good)
    assert load_model(good)[1]["variant"]["name"] == "tiny"
    bad.parent.mkdir(parents=True)
    torch.save({"state_dict": state, "config": {"variant": variant}, "extra": _Payload()}, bad)
    with pytest.raises(DataError, match=r"best.pt: refused: the checkpoint holds Python objects"):
        load_checkpoint(bad)
    torch.save({"state_dict": state, "config": {"variant": {k: variant[k] for k in ("name", "width", "height")}}}, good)
    with pytest.raises(DataError, match=r"config.variant lacks \['arch', 'encoder', 'weight'\]"):
        load_model(good)
    torch.save(["not", "a", "checkpoint"], good)
    with pytest.raises(DataError, match="not a carvana-seg checkpoint"):
        load_model(good)
    # predict --models <any folder> goes through the same loader: one line, exit 2, nothing run
    photo = tmp_path / "car.jpg"
    from carvana_seg.core.images import write_jpeg

    write_jpeg(photo, np.zeros((32, 32, 3), np.uint8))
    assert cli.main(["predict", "--models", str(tmp_path / "evil"), "--out", str(tmp_path / "o"), str(photo)]) == 2
    err = capsys.readouterr().err
    assert "refused" in err and len(err.strip().splitlines()) == 1, err
