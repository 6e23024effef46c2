"""Optimizer and learning-rate schedules of the train stage (training/optim.py), and a tiny AdamW + one-cycle run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from carvana_seg.pipeline import cli
from carvana_seg.pipeline import config as cfgmod
from carvana_seg.training import optim
from tests.helpers import tiny_config, train_cmd


def _lrs(kind: str, total: int = 20, warmup: float = 0.2, opt_name: str = "adamw") -> list[float]:
    model = torch.nn.Linear(2, 1)
    opt = optim.build_optimizer(model.parameters(), opt_name, 1e-2, 0.0)
    sched = optim.Schedule(opt, kind, 1e-2, total, warmup_share=warmup)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.after_step()
    return out


@pytest.mark.parametrize("kind", ["onecycle", "cosine"])
def test_per_step_schedules_warm_up_to_the_peak_then_decay(kind: str) -> None:
    lrs = _lrs(kind)
    peak = max(lrs)
    assert peak == pytest.approx(1e-2, rel=0.02)
    top = lrs.index(peak)
    assert 1 <= top <= 6  # the warm-up: 20 % of 20 steps
    assert lrs[0] <= peak / 4 + 1e-12  # starts low
    assert all(a >= b - 1e-12 for a, b in zip(lrs[top:], lrs[top + 1 :]))  # then never rises
    assert lrs[-1] < peak / 20  # and ends near zero


def test_plateau_ignores_steps_and_cuts_after_patience() -> None:
    model = torch.nn.Linear(2, 1)
    opt = optim.build_optimizer(model.parameters(), "rmsprop", 1e-3, 0.0)
    sched = optim.Schedule(opt, "plateau", 1e-3, 100, factor=0.1, patience=1)
    for _ in range(10):
        sched.after_step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)
    for dice in (0.5, 0.5, 0.5):
        sched.after_epoch(dice)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)


def test_schedule_state_round_trips() -> None:
    model = torch.nn.Linear(2, 1)
    opt = optim.build_optimizer(model.parameters(), "adamw", 1e-2, 1e-4)
    sched = optim.Schedule(opt, "cosine", 1e-2, 10, warmup_share=0.2)
    for _ in range(4):
        opt.step()
        sched.after_step()
    opt2 = optim.build_optimizer(model.parameters(), "adamw", 1e-2, 1e-4)
    sched2 = optim.Schedule(opt2, "cosine", 1e-2, 10, warmup_share=0.2)
    sched2.load_state_dict(sched.state_dict())
    opt2.load_state_dict(opt.state_dict())
    opt.step(), sched.after_step(), opt2.step(), sched2.after_step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"]) and sched2.steps == 5


def test_unknown_names_are_errors() -> None:
    with pytest.raises(ValueError, match="unknown optimizer"):
        optim.build_optimizer(torch.nn.Linear(1, 1).parameters(), "sgd", 1e-3, 0.0)
    with pytest.raises(ValueError, match="unknown schedule"):
        optim.Schedule(optim.build_optimizer(torch.nn.Linear(1, 1).parameters(), "adamw", 1e-3, 0.0), "step", 1e-3, 5)


def test_schema_defaults_keep_the_seed_recipe() -> None:
    tc = tiny_config()["train"]
    assert (tc["optimizer"], tc["schedule"]) == ("rmsprop", "plateau") and 0 <= tc["warmup_share"] < 1


@pytest.mark.slow
def test_train_with_adamw_onecycle(tiny_cache: dict[str, Path], tmp_path: Path) -> None:
    cfg = cfgmod.stage_config(tiny_config(optimizer="adamw", schedule="onecycle", weight_decay=1e-4), "train", "tiny")
    assert cli.main(train_cmd(tiny_cache, cfg, tmp_path)[3:]) == 0
    lrs = pd.read_csv(tmp_path / "metrics.csv")["lr"].tolist()
    # A per-step schedule: the rate changes between epochs (the plateau schedule would keep 1e-3) and stays <= peak.
    assert len(lrs) == 2 and lrs[1] != pytest.approx(lrs[0]) and max(lrs) <= 1e-3 + 1e-12
    assert (tmp_path / "best.pt").is_file()
