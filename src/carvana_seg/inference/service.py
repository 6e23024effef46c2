"""One inference path for every consumer: a results directory's final ensemble, loaded once, photo bytes -> mask.

``Service(results)`` (a results directory, or a bundle file of one: ``inference.bundle``) reads what the run's own
final submission used: the last round's ensemble manifest
(``round<r>/test_probs.json``, else ``test_probs.json``) for the model files *in the ensemble's order*, flip-TTA,
``predict.edge_refine`` and the variant weights; that round's ``threshold.json`` (threshold and OOF Dice); the
checkpoints for network sizes and normalisation. A photo then goes through exactly the test ensemble's steps:
``resize_cache.load_resized`` (EXIF orientation applied), ``batch.variant_probs`` (models, flips, the ensemble's
memory layout), ``maps.finalize`` (upsampling, weighted mean, edge refinement, uint8 ``round(p * 255)``; on
CUDA without refinement ``maps.device_maps``, as the test ensemble does there) and ``masks.binarize`` at the
threshold. ``predict`` (batch cut-outs) and ``serve`` (HTTP) both use it, so a test
photo gets its ``submission.csv.gz`` row unless the outlier check fixed its car (``outliers.csv``): those fixes
judge a car against its other views and the whole test set, which one photo does not have.

Backends: ``torch`` (the test ensemble's own arithmetic: bit-identical masks) or ``onnx`` (ONNX Runtime on the CPU,
each checkpoint exported once into ``<results>/onnx/``; probabilities within ``export.TOLERANCE`` of PyTorch's,
uint8 maps within one level, so an edge pixel at the threshold may flip). ``auto``: the faster one measured on the
device (docs/serve.md): ``onnx`` on a CPU (1.7x on the demo models), ``torch`` on CUDA.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from carvana_seg.core.images import decode_image
from carvana_seg.core.masks import binarize
from carvana_seg.data.resize_cache import load_resized
from carvana_seg.inference import provenance, refine
from carvana_seg.inference.batch import device_probs, variant_probs
from carvana_seg.inference.ensemble import load_variants
from carvana_seg.inference.maps import device_maps, finalize
from carvana_seg.inference.threshold_file import read_threshold
from carvana_seg.models import runtime
from carvana_seg.pipeline.errors import DataError
from carvana_seg.pipeline.rounds import round_dirs
from carvana_seg.settings.build import build
from carvana_seg.settings.predict import EdgeRefine

log = logging.getLogger(__name__)
MANIFEST = "test_probs.json"
BACKENDS = ("auto", "torch", "onnx")
DEFAULT_THRESHOLD = 0.5
NO_REFINE = {"method": "none", "radius": 8, "eps": 1e-3, "scale": 4, "band": 0.0}


@dataclass
class RunInfo:
    """What the final ensemble of a run is made of (``GET /v1/model``)."""

    name: str
    results: Path
    round_dir: Path
    models: list[Path]
    threshold: float
    oof_dice: float | None
    tta_hflip: bool
    edge_refine: EdgeRefine
    weights: dict[str, float]
    config_hash: str | None
    folds: dict[str, list[str]] = field(default_factory=dict)
    trained_on: dict = field(default_factory=dict)  # inference.provenance: data source, cars, photos, sizes


def last_first(results: Path) -> list[Path]:
    """The run's round directories, last round first (``pipeline.rounds.round_dirs`` reversed)."""
    return [d for _, d in reversed(round_dirs(results))]


def final_round(results: Path) -> Path | None:
    """The last round's directory that has an ensemble manifest (``round<r>``, highest r, else ``results``);
    None when the run has no test ensemble yet."""
    return next((d for d in last_first(results) if (d / MANIFEST).is_file()), None)


def find_checkpoints(results: Path) -> list[Path]:
    """Without a manifest: for every variant x fold the ``best.pt`` of the highest round holding it."""
    chosen: dict[tuple[str, str], Path] = {}
    for rdir in last_first(results):
        for path in sorted(rdir.glob("models/*/fold*/best.pt")):
            chosen.setdefault((path.parent.parent.name, path.parent.name), path)
    if not chosen:
        raise DataError(f"{results}: no trained models (expected models/<variant>/fold<k>/best.pt)")
    return [chosen[k] for k in sorted(chosen)]


def last_threshold(results: Path) -> tuple[float, float | None]:
    """The last round's ``threshold.json`` (threshold, OOF mean Dice), else 0.5 with a warning."""
    path = next(
        (d / "threshold.json" for d in last_first(results) if (d / "threshold.json").is_file()),
        Path(results) / "threshold.json",
    )
    if not path.is_file():
        log.warning("%s not found; binarising at %.2f (pass --threshold to choose)", path, DEFAULT_THRESHOLD)
        return DEFAULT_THRESHOLD, None
    record = read_threshold(path)
    return record["threshold"], record.get("mean_dice")


def _locate(model: str, results: Path) -> Path:
    """A manifest's model path: as written (relative to the working directory of the run), else the same path
    below ``results`` (a results tree moved or served from another directory)."""
    path = Path(model)
    if path.is_file():
        return path
    parts = path.parts
    if results.name in parts:
        moved = results.joinpath(*parts[len(parts) - parts[::-1].index(results.name) :])
        if moved.is_file():
            return moved
    raise DataError(f"{results / MANIFEST}: model {model} not found (nor below {results})")


def read_run(results: str | os.PathLike) -> RunInfo:
    """The final ensemble's description from a results directory; DataError naming the file when incomplete."""
    results = Path(results)
    if results.is_file():  # a bundle (inference.bundle): its results tree, unpacked and checked once
        from carvana_seg.inference import bundle

        tree, meta = bundle.unpack(results)
        info = read_run(tree)
        info.trained_on = meta["trained_on"]
        return info
    if not results.is_dir():
        raise DataError(f"{results}: no trained models (results directory not found, nor a bundle file)")
    rdir = final_round(results)
    if rdir is None:  # models trained, no test ensemble yet: the last round's models and threshold, no refinement
        models = find_checkpoints(results)
        threshold, dice = last_threshold(results)
        log.warning(
            "%s has no %s: serving its last round's checkpoints without the run's edge_refine setting",
            results,
            MANIFEST,
        )
        last = next(d for d in last_first(results) if any(m.parents[3] == d for m in models))
        return RunInfo(
            name=results.name,
            results=results,
            round_dir=last,
            models=models,
            threshold=threshold,
            oof_dice=dice,
            tta_hflip=True,
            edge_refine=build(EdgeRefine, NO_REFINE),
            weights={},
            config_hash=None,
            folds=_folds(models),
        )
    try:
        manifest = json.loads((rdir / MANIFEST).read_text())
        record = read_threshold(rdir / "threshold.json")
        threshold = record["threshold"]
    except FileNotFoundError as exc:
        raise DataError(f"{exc.filename}: missing; the run's final round is incomplete") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{rdir}: unreadable {MANIFEST} or threshold.json ({exc})") from exc
    if "edge_refine" not in manifest:
        log.warning("%s predates the recorded edge_refine: serving without edge refinement", rdir / MANIFEST)
    models = [_locate(m, results) for m in manifest["models"]]
    return RunInfo(
        name=results.name,
        results=results,
        round_dir=rdir,
        models=models,
        threshold=threshold,
        oof_dice=record.get("mean_dice"),
        tta_hflip=bool(manifest.get("tta_hflip", True)),
        edge_refine=build(EdgeRefine, manifest.get("edge_refine", NO_REFINE)),
        weights={k: float(v) for k, v in manifest.get("weights", {}).items()},
        config_hash=manifest.get("config_hash"),
        folds=_folds(models),
    )


def _folds(models: list[Path]) -> dict[str, list[str]]:
    folds: dict[str, list[str]] = {}
    for m in models:
        folds.setdefault(m.parent.parent.name, []).append(m.parent.name)
    return folds


class Service:
    """The loaded final ensemble of a run. ``prob``/``mask`` are thread-safe; callers bound the concurrency."""

    def __init__(
        self,
        results: str | os.PathLike,
        device: str = "auto",
        backend: str = "auto",
        threshold: float | None = None,
        tta_hflip: bool | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise DataError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.info = read_run(results)
        if threshold is not None:
            if not 0.0 <= threshold <= 1.0:
                raise DataError(f"--threshold must be in [0, 1], got {threshold}")
            self.info.threshold = float(threshold)
        if tta_hflip is not None:
            self.info.tta_hflip = bool(tta_hflip)
        if backend == "auto":
            backend = "torch" if runtime.pick_device(device).type == "cuda" else "onnx"
        self.backend = backend
        self.device = runtime.pick_device(device) if backend == "torch" else torch.device("cpu")
        self.variants = load_variants(self.info.models, None, False, self.device, self.info.weights)
        self.sizes = sorted({v.size for v in self.variants})
        self.slot = [self.sizes.index(v.size) for v in self.variants]
        if not self.info.trained_on:
            self.info.trained_on = provenance.trained_on(self.info.results, [v.size for v in self.variants])
        self._onnx = None
        if backend == "onnx":
            from carvana_seg.inference.onnx_backend import OnnxEnsemble

            self._onnx = OnnxEnsemble(self.info, self.variants)
            for v in self.variants:  # the sessions hold the weights now: free the PyTorch copies
                v.models = []
        log.info(
            "serving %s (%s), trained on %s: %s; threshold %.4f; edge_refine %s; %s on %s",
            self.info.name,
            self.info.round_dir,
            provenance.describe(self.info.trained_on, self.info.oof_dice),
            ", ".join(f"{v.name} {v.size[0]}x{v.size[1]} x{len(v.models)} w={v.weight:g}" for v in self.variants),
            self.info.threshold,
            self.info.edge_refine.method,
            backend,
            self.device,
        )

    def prob(self, data: bytes | str | os.PathLike, where: str = "image") -> tuple[np.ndarray, np.ndarray]:
        """(RGB photo (H, W, 3), uint8 ensemble probability (H, W)) of a photo given as bytes or a path."""
        raw = data if isinstance(data, (bytes, bytearray)) else Path(data).read_bytes()
        where = where if isinstance(data, (bytes, bytearray)) else str(data)
        shape, images = load_resized(bytes(raw), self.sizes, where)
        rgb = decode_image(raw, 1, where)
        if rgb.shape[:2] != shape:
            raise DataError(f"{where}: decoded as {rgb.shape[1]}x{rgb.shape[0]}, header says {shape[1]}x{shape[0]}")
        stacks = [torch.from_numpy(np.ascontiguousarray(im)[None]) for im in images]
        weights = [v.weight for v in self.variants]
        if self._onnx is None and self.device.type == "cuda" and not refine.enabled(self.info.edge_refine):
            # the test ensemble's CUDA path (stream.iter_probs): upsampling and mean on the device
            probs = device_probs(self.variants, self.slot, stacks, self.device, self.info.tta_hflip)
            return rgb, device_maps([shape], probs, weights)[0][0].cpu().numpy()
        if self._onnx is not None:
            probs = self._onnx.variant_probs(self.slot, stacks, self.info.tta_hflip)
        else:
            probs = variant_probs(self.variants, self.slot, stacks, self.device, self.info.tta_hflip)
        guide = refine.to_gray(rgb) if refine.enabled(self.info.edge_refine) else None
        u8 = finalize(shape, [p[0] for p in probs], weights, guide, self.info.edge_refine)
        return rgb, u8

    def mask(self, data: bytes | str | os.PathLike, where: str = "image") -> tuple[np.ndarray, np.ndarray]:
        """(RGB photo, bool mask at the run's threshold)."""
        rgb, u8 = self.prob(data, where)
        return rgb, binarize(u8, self.info.threshold)

    def describe(self) -> dict:
        """The ensemble as JSON (``GET /v1/model``)."""
        i = self.info
        return {
            "run": i.name,
            "round": i.round_dir.name if i.round_dir != i.results else "round1",
            "config_hash": i.config_hash,
            "threshold": i.threshold,
            "oof_dice": i.oof_dice,
            "tta_hflip": i.tta_hflip,
            "edge_refine": i.edge_refine.method,
            "backend": self.backend,
            "device": str(self.device),
            "trained_on": {**i.trained_on, "summary": provenance.describe(i.trained_on, i.oof_dice)},
            "variants": [
                {
                    "name": v.name,
                    "width": v.size[0],
                    "height": v.size[1],
                    "weight": v.weight,
                    "folds": i.folds.get(v.name, []),
                }
                for v in self.variants
            ],
        }
