"""TensorBoard events of the train stage, read back with tensorboard's EventAccumulator, across a kill and resume."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from carvana_seg.pipeline import cli
from carvana_seg.pipeline import config as cfgmod
from carvana_seg.training.tensorboard_log import SCALARS
from tests.helpers import tiny_config, train_cmd


def _events(log_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


@pytest.mark.slow
def test_events_per_epoch_survive_a_kill_without_duplicate_steps(tiny_cache: dict[str, Path], tmp_path: Path) -> None:
    cfg = cfgmod.stage_config(tiny_config(tensorboard_images=2), "train", "tiny")
    out, board = tmp_path / "run", tmp_path / "tensorboard" / "tiny_fold0_round1"
    cmd = train_cmd(tiny_cache, cfg, out, "--tensorboard", str(board))[3:]
    assert cli.main([*cmd, "--max-epochs-this-run", "1"]) == 2  # "killed" after epoch 1 (state saved)
    # A killed run may have logged an epoch whose state it never saved: epoch 2 here, with a value to spot.
    with SummaryWriter(str(board)) as w:
        w.add_scalar("dice/val", 99.0, 2)
    # Resumes at epoch 2 with purge_step=2, although the number of images shown changed (it is no training setting).
    fewer = cfgmod.stage_config(tiny_config(tensorboard_images=1), "train", "tiny")
    assert cli.main(train_cmd(tiny_cache, fewer, out, "--tensorboard", str(board))[3:]) == 0
    acc = _events(board)
    assert set(SCALARS) <= set(acc.Tags()["scalars"])
    dice = acc.Scalars("dice/val")
    assert [e.step for e in dice] == [1, 2] and all(0 <= e.value <= 1 for e in dice)  # the stale 99 was purged
    assert [e.step for e in acc.Scalars("lr")] == [1, 2]
    images = acc.Images("val/overlays")
    assert sorted({e.step for e in images}) == [1, 2]
    assert [(e.width, e.height) for e in images] == [(2 * 32, 32), (32, 32)]  # two overlays side by side, then one
    share = [e.value for e in acc.Scalars("data_share")]
    assert all(0 <= v <= 1 for v in share)


def test_a_fresh_start_replaces_the_old_curves(tiny_cache: dict[str, Path], tmp_path: Path) -> None:
    board = tmp_path / "tb"
    with SummaryWriter(str(board)) as w:  # curves of an older setup, with more epochs
        for step in (1, 2, 3, 4):
            w.add_scalar("dice/val", 42.0, step)
    cfg = cfgmod.stage_config(tiny_config(tensorboard_images=0), "train", "tiny")
    cfg["variant"]["epochs"] = 1
    assert cli.main(train_cmd(tiny_cache, cfg, tmp_path / "run", "--tensorboard", str(board))[3:]) == 0
    acc = _events(board)
    assert [e.step for e in acc.Scalars("dice/val")] == [1] and acc.Scalars("dice/val")[0].value != 42.0
    assert "val/overlays" not in acc.Tags()["images"]


@pytest.mark.parametrize("target", ["tensorboard"])
def test_make_target_exists(repo_root: Path, target: str) -> None:
    assert f"\n{target}:" in (repo_root / "Makefile").read_text()
