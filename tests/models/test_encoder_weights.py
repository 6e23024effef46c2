"""Pretrained encoder weights offline: a local weights file by path, the Hugging Face cache, and the error when
neither is there. Every weights file is built here; the network is denied throughout."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import constants, file_download

from carvana_seg.models import encoder_weights as ew
from carvana_seg.models.model import build_model, load_model
from carvana_seg.pipeline import cli
from carvana_seg.pipeline import config as cfgmod
from carvana_seg.pipeline.errors import ConfigError

# tiny_cache is a fixture: importing it makes it available here
from tests.helpers import tiny_config, train_cmd

# A distinctive normalisation (0..255 input range, BGR) so that a test sees it was followed.
PARAMS = {"input_space": "BGR", "input_range": [0, 255], "mean": [100.0, 110.0, 120.0], "std": [50.0, 60.0, 70.0]}


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty Hugging Face cache in tmp_path, and every hub request fails as it would offline."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))

    def offline(*args: object, **kwargs: object) -> None:
        raise huggingface_hub.errors.LocalEntryNotFoundError("network denied in tests")

    monkeypatch.setattr(file_download, "get_hf_file_metadata", offline)
    monkeypatch.setattr(file_download, "_get_metadata_or_catch_error", offline)
    return cache


def _encoder_state(seed: int = 3) -> dict[str, torch.Tensor]:
    import segmentation_models_pytorch as smp

    torch.manual_seed(seed)
    return smp.encoders.get_encoder("resnet18").state_dict()


def _train_config(weights: str) -> dict:
    cfg = cfgmod.stage_config(tiny_config(), "train", "tiny")
    cfg["variant"].update(encoder_weights=weights, epochs=1)
    return cfg


@pytest.mark.slow
def test_training_step_from_a_local_weights_file(tiny_cache: dict[str, Path], tmp_path: Path) -> None:
    state = _encoder_state()
    path = tmp_path / "kaggle-dataset" / "resnet18.pth"
    path.parent.mkdir()
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in state.items()}}, path)  # wrapped and prefixed
    (path.parent / "config.json").write_text(json.dumps(PARAMS))
    cfg = _train_config(str(path))
    model = build_model("Unet", "resnet18", str(path), "tiny")
    for k, v in state.items():
        assert torch.equal(model.net.encoder.state_dict()[k], v), k
    assert model.order.tolist() == [2, 1, 0] and model.mean.flatten().tolist() == PARAMS["mean"]
    x = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)  # the wrapper applies the encoder's own recipe
    mean, std = (torch.tensor(PARAMS[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    expected = (x.float().flip(1) - mean) / std
    torch.testing.assert_close((x.float().index_select(1, model.order) - model.mean) / model.std, expected)

    out = tmp_path / "run"
    assert cli.main(train_cmd(tiny_cache, cfg, out)[3:]) == 0
    trained, _ = load_model(out / "best.pt")  # built with encoder_weights=None: the buffers come from the file
    assert trained.mean.flatten().tolist() == PARAMS["mean"] and trained.order.tolist() == [2, 1, 0]


def test_local_file_that_does_not_fit_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(ConfigError, match="variants.v.encoder_weights.*does not fit"):
        build_model("Unet", "resnet18", str(path), "v")
    with pytest.raises(ConfigError, match="variants.v.encoder_weights.*not found"):
        ew.ensure_available("resnet18", str(tmp_path / "missing.pt"), "variants.v.encoder_weights")


def test_imagenet_offline_stops_before_training_and_says_what_to_do(
    tiny_cache: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], no_network: Path
) -> None:
    out = tmp_path / "run"
    assert cli.main(train_cmd(tiny_cache, _train_config("imagenet"), out)[3:]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    repo, rev = ew.hub_repo("resnet18", "imagenet")
    for part in ("variants.tiny.encoder_weights", repo, rev, "model.safetensors", "config.json", str(no_network)):
        assert part in err, part
    assert not (out / "state").exists()  # stopped before training started


def test_imagenet_from_the_hub_cache_offline(no_network: Path) -> None:
    from safetensors.torch import save_file

    repo, rev = ew.hub_repo("resnet18", "imagenet")
    snap = no_network / f"models--{repo.replace('/', '--')}" / "snapshots" / rev
    snap.mkdir(parents=True)
    state = _encoder_state(seed=5)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snap / "model.safetensors"))
    (snap / "config.json").write_text(json.dumps(PARAMS))
    ew.ensure_available("resnet18", "imagenet")  # cached: no download attempted
    model = build_model("Unet", "resnet18", "imagenet", "v")
    assert torch.equal(model.net.encoder.conv1.weight, state["conv1.weight"])
    assert model.std.flatten().tolist() == PARAMS["std"]  # get_preprocessing_params read the cached config.json


def test_unknown_setting_and_scratch() -> None:
    with pytest.raises(ConfigError, match="no pretrained setting 'imagenet22k'"):
        ew.ensure_available("resnet18", "imagenet22k")
    scratch = build_model("Unet", "resnet18", None, "v")
    torch.testing.assert_close(scratch.mean.flatten(), torch.tensor(ew.IMAGENET["mean"]) * 255)
