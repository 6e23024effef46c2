"""Model construction and checkpoints.

Every model is an smp architecture wrapped in ``Normalized``, which takes raw 0..255 RGB (N, 3, H, W) and applies
its encoder's normalisation itself (``encoder_weights.preprocessing``: ``smp.encoders.get_preprocessing_params``
of the pretrained weights; kept as buffers in every checkpoint): training, OOF, test inference, ``predict``, the
outlier zoom and ONNX export then feed pixels the same way and can never disagree on preprocessing. Checkpoints
hold the weights *and* the resolved config slice that made them, so a model file is self-describing.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from carvana_seg.models import encoder_weights, weight_packages
from carvana_seg.pipeline import staging
from carvana_seg.pipeline.errors import ConfigError, DataError

# what loading a checkpoint (build_model) and ensembling it (size, weight) read from its config.variant
CHECKPOINT_VARIANT_KEYS = ("name", "arch", "encoder", "width", "height", "weight")


class Normalized(nn.Module):
    """Wrap a segmentation net: input 0..255 RGB (float or uint8), output logits (N, 1, H, W).

    ``params`` (``get_preprocessing_params`` format: input_space, input_range, mean, std) become the buffers
    ``order`` (channel order), ``mean`` and ``std`` in 0..255 units: ``(x[:, order] - mean) / std`` equals the
    encoder's ``(x / 255 * range_max - mean) / std``."""

    def __init__(self, net: nn.Module, params: dict | None = None) -> None:
        super().__init__()
        p = params or encoder_weights.IMAGENET
        scale = 255.0 / float(p.get("input_range", [0, 1])[1])
        self.net = net
        self.register_buffer("order", torch.tensor([2, 1, 0] if p.get("input_space") == "BGR" else [0, 1, 2]))
        self.register_buffer("mean", torch.tensor(p["mean"], dtype=torch.float32).view(1, 3, 1, 1) * scale)
        self.register_buffer("std", torch.tensor(p["std"], dtype=torch.float32).view(1, 3, 1, 1) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float().index_select(1, self.order) - self.mean) / self.std
        return self.net(x)


def build_model(arch: str, encoder: str, weights: str | None, name: str) -> Normalized:
    """The smp model of variant ``name`` (``arch``, ``encoder``, ``encoder_weights``), one output channel (logits);
    ``name`` only says which ``variants`` entry an error is about."""
    import segmentation_models_pytorch as smp

    key = f"variants.{name}"
    local = encoder_weights.is_path(weights) or weight_packages.is_package(weights)
    try:
        net = smp.create_model(
            arch, encoder_name=encoder, encoder_weights=None if local else weights, in_channels=3, classes=1
        )
    except KeyError as exc:
        raise ConfigError(f"config key '{key}.encoder': unknown encoder '{encoder}'") from exc
    except Exception as exc:
        if weights:
            raise ConfigError(
                f"config key '{key}.encoder_weights': could not fetch '{weights}' weights "
                f"for encoder '{encoder}' ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); "
                "this needs network access to the model hub. "
                "Set encoder_weights to a local weights file, or null to train from scratch offline."
            ) from exc
        raise
    if weight_packages.is_package(weights):
        weight_packages.load_encoder(weights, encoder, net.encoder, f"{key}.encoder_weights")
    elif local:
        encoder_weights.load_local(weights, net.encoder, f"{key}.encoder_weights")
    return Normalized(net, encoder_weights.preprocessing(encoder, weights))


def save_checkpoint(path: str | os.PathLike, model: nn.Module, cfg: dict, **extra: Any) -> None:
    """Write ``{"state_dict", "config", **extra}`` atomically (tmp + rename): never a half-written model."""
    state = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    staging.write_bytes(Path(path), to_bytes({"state_dict": state, "config": cfg, **extra}))


def to_bytes(obj: dict) -> bytes:
    """``torch.save`` into memory, so the file write goes through ``staging`` (one WriteError, no temporary)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[Normalized, dict]:
    """Load a checkpoint written by ``save_checkpoint``: (model in eval mode on ``device``, its config slice)."""
    ckpt = load_checkpoint(path)
    v = ckpt["config"]["variant"]
    model = build_model(v["arch"], v["encoder"], None, v["name"])  # weights come from the checkpoint
    model.load_state_dict(with_order(ckpt["state_dict"]))
    return model.to(device).eval(), ckpt["config"]


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint's contents, loaded with ``weights_only=True``: tensors and plain data only, so a checkpoint from
    an untrusted source (a shared Kaggle dataset, ``predict --models``) cannot run code while it loads."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: model checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise DataError(
            f"{path}: refused: the checkpoint holds Python objects besides tensors and plain data "
            f"(loading it could run code); only checkpoints holding plain data are loaded"
        ) from exc
    except Exception as exc:
        raise DataError(
            f"{path}: not a readable checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160] if str(exc) else ''})"
        ) from exc
    if (
        not isinstance(ckpt, dict)
        or "state_dict" not in ckpt
        or not isinstance(ckpt.get("config"), dict)
        or not isinstance(ckpt["config"].get("variant"), dict)
    ):
        raise DataError(f"{path}: not a carvana-seg checkpoint (no state_dict and config.variant)")
    # Every checkpoint the train stage wrote holds the whole validated variant (these keys have been in the schema
    # since its first version); one made elsewhere must hold at least what loading and ensembling it reads.
    missing = [k for k in CHECKPOINT_VARIANT_KEYS if k not in ckpt["config"]["variant"]]
    if missing:
        raise DataError(f"{path}: checkpoint's config.variant lacks {missing}")
    return ckpt


def with_order(state: dict) -> dict:
    """A ``Normalized`` state dict saved before the ``order`` buffer existed gets the RGB order it was trained with."""
    return state if "order" in state else {**state, "order": torch.tensor([0, 1, 2])}


def _unwrap(model: nn.Module) -> nn.Module:
    """The module underneath ``torch.compile``/DataParallel wrappers."""
    return getattr(model, "_orig_mod", getattr(model, "module", model))
