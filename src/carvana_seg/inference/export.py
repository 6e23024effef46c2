"""``export``: one trained model (``best.pt``) to ONNX, checked against PyTorch with onnxruntime.

The ONNX graph is the whole ``model.Normalized`` plus a sigmoid: input ``image`` is float32 RGB 0..255,
shape (batch, 3, height, width) at the variant's network size, with a dynamic batch axis; output ``probability``
is (batch, 1, height, width) in [0, 1]. Resize photos to that size first and the probability map back to the
photo's size (as ``predict`` does), then binarise at the run's ``threshold.json``. The variant's settings are
stored in the model's metadata (``carvana_seg.variant``, JSON).

``--check`` runs a seeded random batch of two through both runtimes and fails when the largest absolute
difference of probabilities reaches ``1e-4``.
"""

from __future__ import annotations

import argparse
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from carvana_seg.pipeline import staging
from carvana_seg.pipeline.errors import CarvanaSegError

log = logging.getLogger(__name__)
TOLERANCE = 1e-4


class Probabilities(nn.Module):
    """``Normalized`` model followed by a sigmoid: 0..255 RGB in, probabilities out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(x))


def export(checkpoint: Path, out: Path, opset: int = 17) -> dict:
    """Write ``out`` (ONNX) from a checkpoint; return the checkpoint's variant settings."""
    import onnx

    from carvana_seg.models.model import load_model

    model, cfg = load_model(checkpoint, "cpu")
    variant = cfg["variant"]
    wrapped = Probabilities(model).eval()
    sample = torch.zeros(1, 3, int(variant["height"]), int(variant["width"]))
    with staging.staged_file(out) as tmp:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated (dynamo), still supported
                torch.onnx.export(
                    wrapped, (sample,), str(tmp), dynamo=False, opset_version=opset,
                    input_names=["image"], output_names=["probability"],
                    dynamic_axes={"image": {0: "batch"}, "probability": {0: "batch"}},
                )
            proto = onnx.load(str(tmp))
            onnx.checker.check_model(proto)
        except Exception as exc:
            first = (str(exc).splitlines() or [""])[0][:200]
            msg = f"{checkpoint}: ONNX export at opset {opset} failed ({type(exc).__name__}: {first})"
            raise CarvanaSegError(msg) from exc
        meta = {"carvana_seg.variant": json.dumps(variant, sort_keys=True),
                "carvana_seg.input": "float32 RGB 0..255, NCHW", "carvana_seg.output": "sigmoid probability"}
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(tmp))
    return variant


def check(checkpoint: Path, onnx_path: Path, batch: int = 2, seed: int = 0) -> float:
    """Largest absolute difference of probabilities between onnxruntime and PyTorch on a random batch."""
    import onnxruntime as ort

    from carvana_seg.models.model import load_model

    model, cfg = load_model(checkpoint, "cpu")
    v = cfg["variant"]
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, size=(batch, 3, int(v["height"]), int(v["width"]))).astype(np.float32)
    with torch.inference_mode():
        want = Probabilities(model).eval()(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(["probability"], {"image": x})[0]
    if got.shape != want.shape:
        raise CarvanaSegError(f"{onnx_path}: ONNX output shape {got.shape} != PyTorch {want.shape}")
    return float(np.abs(got - want).max())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint: results/<name>/models/<variant>/fold<k>/best.pt")
    parser.add_argument("--out", required=True, help="ONNX file to write")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    parser.add_argument("--check", action="store_true", help="compare with PyTorch on a sample batch (onnxruntime)")


def run(args: argparse.Namespace, cfg: dict) -> None:  # noqa: ARG001 - export reads no config slice
    checkpoint, out = Path(args.model), Path(args.out)
    variant = export(checkpoint, out, args.opset)
    log.info("wrote %s: variant %s, input (batch, 3, %d, %d) float32 0..255, opset %d, %.1f MB", out,
             variant["name"], variant["height"], variant["width"], args.opset, out.stat().st_size / 1e6)
    if args.check:
        diff = check(checkpoint, out)
        print(f"max abs diff of probabilities (onnxruntime vs PyTorch): {diff:.3g} (tolerance {TOLERANCE:g})")
        if not diff < TOLERANCE:
            raise CarvanaSegError(f"{out}: ONNX and PyTorch probabilities differ by {diff:.3g} (>= {TOLERANCE:g})")
