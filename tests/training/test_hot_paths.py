"""Training hot paths that a CPU can show: persistent workers reseeded per epoch exactly as re-forked ones, the
deferred loss/non-finite read (``train.sync_every_steps``), and the resume-state cadence (``state_every_epochs``)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from carvana_seg.pipeline import cli
from carvana_seg.pipeline import config as cfgmod
from carvana_seg.training import loop
from carvana_seg.training.dataset import EpochSampler, EpochSeeded, worker_init
from tests.helpers import tiny_config, train_cmd


class _Draws(Dataset):
    """Each item: its index and what numpy, torch and Python's RNGs draw in the worker (an augmentation's view)."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int) -> torch.Tensor:
        import random

        return torch.tensor([i, np.random.randint(1 << 30), int(torch.randint(1 << 30, ())), random.randrange(1 << 30)])

    def reseed(self, seed: int) -> None:  # the augmentation's hook; worker_init seeds numpy
        pass


def _epochs(persistent: bool, epochs: range) -> list[torch.Tensor]:
    """Batches of ``epochs`` as training draws them: per-epoch reseeding, 2 workers, re-forked or persistent."""
    ds, gen = _Draws(), torch.Generator()
    if persistent:
        sampler = EpochSampler(len(ds), gen)
        dl = DataLoader(
            EpochSeeded(ds),
            4,
            sampler=sampler,
            num_workers=2,
            generator=gen,
            worker_init_fn=worker_init,
            persistent_workers=True,
        )
    else:
        sampler = None
        dl = DataLoader(ds, 4, shuffle=True, num_workers=2, generator=gen, worker_init_fn=worker_init)
    t = SimpleNamespace(gen=gen, train_ds=ds, sampler=sampler, seed=7, loader_started=False)
    out = []
    for epoch in epochs:
        loop._seed_epoch(t, epoch)  # the loop's own per-epoch seeding
        out.append(torch.cat(list(dl)))
    return out


def test_persistent_workers_draw_what_reforked_workers_drew():
    reforked, persistent = _epochs(False, range(1, 4)), _epochs(True, range(1, 4))
    for a, b in zip(reforked, persistent):
        assert torch.equal(a, b)
    assert not torch.equal(reforked[0], reforked[1])  # epochs do differ
    assert torch.equal(_epochs(True, range(3, 4))[0], persistent[2])  # a run resumed at epoch 3 draws the same


@pytest.mark.slow
def test_deferred_sync_trains_the_same_numbers_and_still_stops_on_nonfinite(
    tiny_cache: dict[str, Path], tmp_path: Path, capsys
) -> None:
    def trained(**train: object) -> dict:
        out = tmp_path / str(len(list(tmp_path.iterdir())))
        cfg = cfgmod.stage_config(tiny_config(**train), "train", "tiny")
        assert cli.main(train_cmd(tiny_cache, cfg, out)[3:]) == 0
        return torch.load(out / "best.pt", weights_only=True)["state_dict"]

    every_step, deferred = trained(), trained(sync_every_steps=3)
    assert all(torch.equal(every_step[k], deferred[k]) for k in every_step)  # finite losses: identical training
    cfg = cfgmod.stage_config(tiny_config(max_nonfinite_steps=2, sync_every_steps=3), "train", "tiny")
    cfg["variant"]["lr"] = 1e30  # the first step blows the weights up, the following losses are NaN
    assert cli.main(train_cmd(tiny_cache, cfg, tmp_path / "nan")[3:]) == 2
    err = capsys.readouterr().err
    assert "consecutive non-finite losses" in err and "train.max_nonfinite_steps=2" in err
    assert not (tmp_path / "nan" / "best.pt").exists()


@pytest.mark.slow
def test_resume_state_is_written_every_n_epochs_and_after_the_last(
    tiny_cache: dict[str, Path], tmp_path: Path, monkeypatch
) -> None:
    from carvana_seg.training import state

    epochs: list[int] = []
    real = state.save_state
    monkeypatch.setattr(state, "save_state", lambda obj, path: (epochs.append(obj["epoch"]), real(obj, path)))
    cfg = cfgmod.stage_config(tiny_config(state_every_epochs=2), "train", "tiny")
    cfg["variant"]["epochs"] = 3
    assert cli.main(train_cmd(tiny_cache, cfg, tmp_path)[3:]) == 0
    assert epochs == [2, 3]
    epochs.clear()
    cfg = cfgmod.stage_config(tiny_config(state_every_epochs=5, state_every_seconds=1e-9), "train", "tiny")
    assert cli.main(train_cmd(tiny_cache, cfg, tmp_path / "b")[3:]) == 0
    assert epochs == [1, 2]  # the time budget: every epoch took longer than it


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_masks_become_coverage_on_the_device(dtype):
    m = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    _, y = loop._to_device(
        torch.zeros(1, 3, 2, 2), m if dtype == torch.uint8 else m.float() / 255.0, torch.device("cpu"), False
    )
    np.testing.assert_array_equal(y.numpy(), m.numpy().astype(np.float32) / 255.0)


def test_tensorboard_outline_is_the_same_from_uint8_and_float_masks():
    from carvana_seg.training.tensorboard_log import overlays

    class Empty(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((x.shape[0], 1, *x.shape[2:]), -1.0)

    y = torch.zeros(1, 16, 16, dtype=torch.uint8)
    y[0, 2:8, 2:8], y[0, 9:14, 9:14] = 100, 200  # below and above half coverage
    x = torch.zeros(3, 16, 16, dtype=torch.uint8)
    from_uint8 = overlays(Empty(), [(x, y)], torch.device("cpu"), 1)
    np.testing.assert_array_equal(from_uint8, overlays(Empty(), [(x, y.float() / 255.0)], torch.device("cpu"), 1))
    green = (from_uint8[0] == (0, 255, 0)).all(-1)
    assert green[9:14, 9:14].any() and not green[2:8, 2:8].any()
