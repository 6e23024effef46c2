"""The served ensemble on ONNX Runtime (``serve --backend onnx``): each checkpoint exported once, then run by ORT.

Exports go to ``<results>/onnx/<variant>/<fold>.onnx`` (``export.export``: the whole normalised model plus its
sigmoid) and are reused while they are newer than their checkpoint. The flip-TTA and fold mean follow
``runtime.predict_probs``; probabilities agree with PyTorch's within ``export.TOLERANCE``, not bit for bit.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)


def onnx_path(results: Path, checkpoint: Path) -> Path:
    """Where the export of ``checkpoint`` (``.../models/<variant>/fold<k>/best.pt``) lives: ``<results>/onnx/``, or
    a per-run folder of ``~/.cache/carvana-seg/onnx`` when the results directory is read-only."""
    rnd = checkpoint.parent.parent.parent.parent.name  # results/<name> or round<r>
    prefix = f"{rnd}_" if rnd.startswith("round") else ""
    base = results / "onnx"
    try:
        base.mkdir(exist_ok=True)
        writable = os.access(base, os.W_OK)
    except OSError:
        writable = False
    if not writable:
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "carvana-seg" / "onnx"
        base = cache / hashlib.sha256(str(results.resolve()).encode()).hexdigest()[:16]
    return base / checkpoint.parent.parent.name / f"{prefix}{checkpoint.parent.name}.onnx"


class OnnxEnsemble:
    """One ORT session per checkpoint of the run's final ensemble, grouped like ``ensemble.load_variants``."""

    def __init__(self, info, variants: Sequence) -> None:
        import onnxruntime as ort

        from carvana_seg.inference.export import export

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        by_variant: dict[str, list] = {v.name: [] for v in variants}
        for ckpt in info.models:
            out = onnx_path(info.results, ckpt)
            if not out.is_file() or out.stat().st_mtime < ckpt.stat().st_mtime:
                log.info("exporting %s -> %s", ckpt, out)
                out.parent.mkdir(parents=True, exist_ok=True)
                variant = export(ckpt, out)
            else:
                from carvana_seg.models.model import load_checkpoint

                variant = load_checkpoint(ckpt)["config"]["variant"]
            session = ort.InferenceSession(os.fspath(out), opts, providers=["CPUExecutionProvider"])
            by_variant[variant["name"]].append(session)
        self.sessions = [by_variant[v.name] for v in variants]

    def variant_probs(self, slot: Sequence[int], stacks: Sequence[torch.Tensor], tta_hflip: bool) -> list[np.ndarray]:
        """Like ``batch.variant_probs``: each variant's mean probability (N, h, w) float32."""
        xs = [np.ascontiguousarray(s.numpy().transpose(0, 3, 1, 2), dtype=np.float32) for s in stacks]
        out = []
        for sessions, k in zip(self.sessions, slot):
            x, n = xs[k], xs[k].shape[0]
            x = np.concatenate([x, x[..., ::-1]]) if tta_hflip else x
            total = None
            for sess in sessions:
                p = sess.run(["probability"], {"image": np.ascontiguousarray(x)})[0][:, 0]
                p = (p[:n] + p[n:, :, ::-1]) * 0.5 if tta_hflip else p
                total = p if total is None else total + p
            out.append((total / len(sessions)).astype(np.float32))
        return out
