"""``export``: one trained model (``best.pt``) to ONNX, checked against PyTorch with onnxruntime.

The ONNX graph comes from the dynamo-based exporter (``torch.onnx.export(..., dynamo=True)``, via onnxscript) and
is the whole ``model.Normalized`` (the encoder's normalisation included) plus a sigmoid: input ``image`` is float32
RGB 0..255, shape (batch, 3, height, width) with all three of batch, height and width dynamic (height and width
multiples of 32; the model was trained at the variant's size, stored in the metadata); output ``probability`` is
(batch, 1, height, width) in [0, 1]. Resize photos to the variant's size first and the probability map back to the
photo's size (as ``predict`` does), then binarise at the run's ``threshold.json``. The variant's settings are
stored in the model's metadata (``carvana_seg.variant``, JSON).

``--check`` runs seeded random batches at two image sizes (the variant's, batch 2; and 32 px larger each way,
batch 1) through both runtimes and fails when the largest absolute difference of probabilities reaches ``1e-4``.
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
OPSET = 18  # the dynamo exporter's (onnxscript's) default opset


class Probabilities(nn.Module):
    """``Normalized`` model followed by a sigmoid: 0..255 RGB in, probabilities out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(x))


def export(checkpoint: Path, out: Path, opset: int = OPSET) -> dict:
    """Write ``out`` (ONNX) from a checkpoint; return the checkpoint's variant settings."""
    import onnx
    from torch.export import Dim

    from carvana_seg.models.model import load_model

    model, cfg = load_model(checkpoint, "cpu")
    variant = cfg["variant"]
    wrapped = Probabilities(model).eval()
    sample = torch.zeros(1, 3, int(variant["height"]), int(variant["width"]))
    for name in ("onnx_ir", "onnxscript"):  # one INFO line per graph rewrite otherwise
        logging.getLogger(name).setLevel(logging.WARNING)
    with staging.staged_file(out) as tmp:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    wrapped,
                    (sample,),
                    str(tmp),
                    dynamo=True,
                    opset_version=opset,
                    verbose=False,
                    input_names=["image"],
                    output_names=["probability"],
                    dynamic_shapes={"x": {0: Dim.DYNAMIC, 2: Dim.DYNAMIC, 3: Dim.DYNAMIC}},
                )
            proto = onnx.load(str(tmp))
            _name_axes(proto)
            onnx.checker.check_model(proto)
        except Exception as exc:
            first = (str(exc).splitlines() or [""])[0][:200]
            msg = f"{checkpoint}: ONNX export at opset {opset} failed ({type(exc).__name__}: {first})"
            raise CarvanaSegError(msg) from exc
        meta = {
            "carvana_seg.variant": json.dumps(variant, sort_keys=True),
            "carvana_seg.input": "float32 RGB 0..255, NCHW",
            "carvana_seg.output": "sigmoid probability",
        }
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(tmp))
    return variant


def _name_axes(proto) -> None:
    """Name the exporter's symbolic dims (``s77``...) of the input ``batch``, ``height``, ``width`` everywhere."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    names = {dims[i].dim_param: n for i, n in ((0, "batch"), (2, "height"), (3, "width")) if dims[i].dim_param}
    for value in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        for d in value.type.tensor_type.shape.dim:
            if d.dim_param in names:
                d.dim_param = names[d.dim_param]


def check_sizes(variant: dict) -> list[tuple[int, int, int]]:
    """(batch, height, width) of the ``--check`` batches: the variant's size, and 32 px larger each way."""
    h, w = int(variant["height"]), int(variant["width"])
    return [(2, h, w), (1, h + 32, w + 32)]


def check(checkpoint: Path, onnx_path: Path, seed: int = 0) -> dict[tuple[int, int, int], float]:
    """Largest absolute difference of probabilities between onnxruntime and PyTorch, per ``check_sizes`` batch."""
    import onnxruntime as ort

    from carvana_seg.models.model import load_model

    model, cfg = load_model(checkpoint, "cpu")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    diffs = {}
    for n, h, w in check_sizes(cfg["variant"]):
        x = rng.uniform(0, 255, size=(n, 3, h, w)).astype(np.float32)
        with torch.inference_mode():
            want = Probabilities(model).eval()(torch.from_numpy(x)).numpy()
        got = session.run(["probability"], {"image": x})[0]
        if got.shape != want.shape:
            raise CarvanaSegError(f"{onnx_path}: ONNX output shape {got.shape} != PyTorch {want.shape}")
        diffs[(n, h, w)] = float(np.abs(got - want).max())
    return diffs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint: results/<name>/models/<variant>/fold<k>/best.pt")
    parser.add_argument("--out", required=True, help="ONNX file to write")
    parser.add_argument("--opset", type=int, default=OPSET, help="ONNX opset version")
    parser.add_argument("--check", action="store_true", help="compare with PyTorch on a sample batch (onnxruntime)")


def run(args: argparse.Namespace, cfg: dict) -> None:  # noqa: ARG001 - export reads no config slice
    checkpoint, out = Path(args.model), Path(args.out)
    variant = export(checkpoint, out, args.opset)
    log.info(
        "wrote %s: variant %s (trained at %dx%d), input (batch, 3, height, width) float32 0..255, opset %d, %.1f MB",
        out,
        variant["name"],
        variant["width"],
        variant["height"],
        args.opset,
        out.stat().st_size / 1e6,
    )
    if args.check:
        for (n, h, w), diff in check(checkpoint, out).items():
            print(
                f"batch {n} at {w}x{h}: max abs diff of probabilities (onnxruntime vs PyTorch) {diff:.3g} "
                f"(tolerance {TOLERANCE:g})"
            )
            if not diff < TOLERANCE:
                raise CarvanaSegError(
                    f"{out}: ONNX and PyTorch probabilities differ by {diff:.3g} at {w}x{h} (>= {TOLERANCE:g})"
                )
