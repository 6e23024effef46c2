"""Fail loudly instead of crawling: a GPU job on a box where torch sees no GPU stops with one line.

A fake ``nvidia-smi`` on PATH plays a GPU box whose driver the torch wheel cannot use (torch here has no GPU).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from carvana_seg.models import runtime
from carvana_seg.pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
FAKE_SMI = """#!/bin/sh
case "$1" in
  -L) echo "GPU 0: NVIDIA H200 (UUID: GPU-00000000-0000-0000-0000-000000000000)" ;;
  *) echo "NVIDIA H200, 535.54.03" ;;
esac
"""


@pytest.fixture
def no_gpu_torch(monkeypatch, tmp_path):
    """torch without a usable GPU, no scheduler-assigned device, and an empty PATH dir for fake tools."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CARVANA_SEG_REQUIRE_GPU", raising=False)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}/usr/bin{os.pathsep}/bin")
    return bindir


def _fake_driver(bindir: Path) -> None:
    smi = bindir / "nvidia-smi"
    smi.write_text(FAKE_SMI)
    smi.chmod(0o755)


def test_cpu_box_without_a_driver_falls_back_to_cpu(no_gpu_torch):
    assert runtime.nvidia_smi() == ([], None)
    assert runtime.pick_device("auto") == torch.device("cpu")
    assert runtime.pick_device("cpu") == torch.device("cpu")


def test_driver_visible_but_torch_sees_no_gpu_stops_with_one_line(no_gpu_torch):
    _fake_driver(no_gpu_torch)
    assert runtime.nvidia_smi() == (["NVIDIA H200"], "535.54.03")
    with pytest.raises(ConfigError) as err:
        runtime.pick_device("auto")
    msg = str(err.value)
    assert "\n" not in msg and "535.54.03" in msg and "NVIDIA H200" in msg and torch.__version__ in msg
    assert (f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only build") in msg
    assert runtime.pick_device("cpu") == torch.device("cpu")  # device: cpu stays allowed on purpose


def test_cuda_requested_or_assigned_without_gpu_stops(no_gpu_torch, monkeypatch):
    with pytest.raises(ConfigError, match="device 'cuda' requested but torch sees no CUDA device"):
        runtime.pick_device("cuda")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # what SLURM or pipeline.gpu.claim_device sets
    with pytest.raises(ConfigError, match="a GPU is expected"):
        runtime.pick_device("auto")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert runtime.pick_device("auto") == torch.device("cpu")
    monkeypatch.setenv("CARVANA_SEG_REQUIRE_GPU", "1")
    with pytest.raises(ConfigError, match="no NVIDIA driver"):
        runtime.pick_device("auto")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # a GPU allocation used on the CPU on purpose
    monkeypatch.setenv("CARVANA_SEG_REQUIRE_GPU", "0")
    assert runtime.pick_device("auto") == torch.device("cpu")


def test_train_stage_launched_for_a_gpu_exits_2_naming_the_mismatch(no_gpu_torch, monkeypatch, tmp_path, capsys):
    """The whole CLI path of a ``--resources gpu=1`` job: claim_device takes the GPU nvidia-smi lists, the stage's
    device resolution finds that torch cannot use it, and the job exits 2 before reading any data."""
    from carvana_seg.pipeline import cli, gpu
    from carvana_seg.pipeline import config as cfgmod

    _fake_driver(no_gpu_torch)
    held: dict[str, int] = {}
    monkeypatch.setattr(gpu, "_HELD", held)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # recorded, so teardown removes what the claim sets
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.delenv("CARVANA_SEG_FAKE_GPUS", raising=False)
    monkeypatch.setenv("CARVANA_SEG_GPU_LOCK_DIR", str(tmp_path / "locks"))
    cfg = cfgmod.stage_config(cfgmod.load(ROOT / "config" / "demo.yaml"), "train", "unet_r18_a")
    cfg["variant"]["encoder_weights"] = None
    try:
        code = cli.main(
            [
                "train",
                "--cfg",
                json.dumps(cfg),
                "--variant",
                "unet_r18_a",
                "--fold",
                "0",
                "--folds",
                str(tmp_path / "folds.csv"),
                "--cache",
                str(tmp_path / "cache"),
                "--out-model",
                str(tmp_path / "best.pt"),
                "--out-metrics",
                str(tmp_path / "m.csv"),
                "--state-dir",
                str(tmp_path / "state"),
            ]
        )
        err = capsys.readouterr().err
        assert code == 2, err
        lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and "torch sees no CUDA device" in lines[0] and "535.54.03" in lines[0], err
        assert held["device"] == 0 and not (tmp_path / "best.pt").exists()
    finally:
        if "fd" in held:
            os.close(held["fd"])
