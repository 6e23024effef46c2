"""The ``ensemble`` stage: one streaming flip-TTA pass of every model over the test set, into resumable shards.

Each test image is decoded once and resized to every variant's resolution; every fold model of every variant runs
on the batch and its mirror; each variant's mean probability is resized back to the original size (INTER_LINEAR)
and the weighted mean over variants taken (``maps``). ``stream.iter_probs`` schedules that work (overlapping the
GPU on CUDA, taking turns with the models on a CPU); this module streams its uint8 maps (``round(p * 255)``) into
the current shard, in order.

Shards ``shard_00000.npz`` ... hold ``shard_size`` images each (npz keyed by image id, deflated, written entry by
entry to a temporary file and renamed when complete), so memory stays one batch plus one image whatever the test
set size, and a killed run resumes at the first missing shard. ``shards_meta.json`` records a hash of the model
files and of the settings that change the numbers; a different hash discards the old shards. Beside each shard,
``variants_00000.npz`` ... hold every variant's own binarised mask at 1/4 scale, bit-packed (``variant_masks``),
for the outlier checks; it is written before its shard, and a shard counts as done only when both exist.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from carvana_seg.core import layout
from carvana_seg.inference import refine, shard_store, variant_masks
from carvana_seg.inference.shard_store import prepare_dir, shard_complete, shard_name
from carvana_seg.inference.stream import iter_probs, phased
from carvana_seg.models import runtime
from carvana_seg.pipeline import staging, state_location
from carvana_seg.pipeline.config import config_hash, to_json
from carvana_seg.pipeline.errors import ConfigError, DataError
from carvana_seg.pipeline.resources import torch_threads
from carvana_seg.settings.build import build
from carvana_seg.settings.folds import Folds
from carvana_seg.settings.predict import Predict
from carvana_seg.settings.variants import Variant
from carvana_seg.training import state_store

log = logging.getLogger(__name__)


@dataclass
class LoadedVariant:
    """One ensemble member as loaded for prediction: its fold models, network size (W, H) and ensemble weight
    (``settings.variants.Variant`` is the member's configuration)."""

    name: str
    size: tuple[int, int]
    weight: float
    models: list[torch.nn.Module]


def load_variants(
    paths: list[Path],
    config: Sequence[Variant] | None,
    compile_models: bool,
    device: torch.device,
    weights: Mapping[str, float] | None = None,
) -> list[LoadedVariant]:
    """Load every checkpoint and group them by the variant recorded in it: the one grouping of checkpoints that
    the test ensemble, the zoom re-prediction, ``predict`` and ``serve`` share.

    With ``config`` (the ``variants`` settings): in its order, each checkpoint checked against it. Without (a
    results directory served on its own): in the order of ``paths``, sizes checked across folds, weights from
    ``weights`` (the ensemble manifest's) else the checkpoint's. ``compile_models``: ``predict.compile``."""
    from carvana_seg.models.model import load_model

    loaded: dict[str, LoadedVariant] = {}
    for path in paths:
        model, ckpt_cfg = load_model(path, device)
        v = ckpt_cfg["variant"]
        size = (int(v["width"]), int(v["height"]))
        if config is not None:
            want = next((c for c in config if c.name == v["name"]), None)
            if want is None:
                raise ConfigError(f"{path}: variant '{v['name']}' is not in config key 'variants'")
            if size != (want.width, want.height):
                raise ConfigError(
                    f"{path}: trained at {size[0]}x{size[1]} but config variant '{v['name']}' "
                    f"says {want.width}x{want.height}"
                )
        weight = float((weights or {}).get(v["name"], v.get("weight", 1.0)))
        have = loaded.setdefault(v["name"], LoadedVariant(v["name"], size, weight, []))
        if have.size != size:
            raise DataError(f"{path}: variant '{v['name']}' at {size[0]}x{size[1]} disagrees with its other folds")
        # the loader's (N, H, W, 3) batches arrive as channels-last tensors: match the weights once, on CUDA
        model = model.to(memory_format=torch.channels_last) if device.type == "cuda" else model
        have.models.append(runtime.maybe_compile(model, compile_models))
    if config is None:
        return list(loaded.values())
    missing = [c.name for c in config if c.name not in loaded]
    if missing:
        raise ConfigError(f"no model checkpoints given for variant(s) {missing}")
    return [LoadedVariant(c.name, loaded[c.name].size, float(c.weight), loaded[c.name].models) for c in config]


def run_hash(paths: list[Path], predict: Predict, variants: Sequence[Variant], folds: Folds, ids: list[str]) -> str:
    """Hash of what determines the shards: model file contents, TTA, edge refinement, variants, folds, shard size,
    test ids. The settings enter as the JSON of their validated sections (``asdict``), as they always have."""
    h = hashlib.sha256()
    for digest in sorted(_file_sha(p) for p in paths):
        h.update(digest.encode())  # contents, not names or mtimes: a retrained model always invalidates
    h.update(
        to_json(
            {"tta": predict.tta_hflip, "n": predict.shard_size, "v": [asdict(v) for v in variants], "f": asdict(folds)}
        ).encode()
    )
    if refine.enabled(predict.edge_refine):  # only when on: shards of runs without it keep their hash
        h.update(to_json({"edge_refine": asdict(predict.edge_refine)}).encode())
    h.update("\n".join(ids).encode())
    return h.hexdigest()[:16]


def _file_sha(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def write_shards(
    variants: list[LoadedVariant],
    raw: Path,
    ids: list[str],
    out_dir: Path,
    pcfg: Predict,
    device: torch.device,
    on_shard: Callable[[int], None] | None = None,
) -> dict:
    """Compute every missing shard in order; return per-shard records and how many images were computed.
    ``on_shard(k)`` runs after shard ``k`` is complete (the state store's upload)."""
    size = pcfg.shard_size
    plan = [(k, ids[s : s + size]) for k, s in enumerate(range(0, len(ids), size))]
    todo = [
        (k, chunk)
        for k, chunk in plan
        if not (
            shard_complete(out_dir / shard_name(k), chunk)
            and shard_complete(out_dir / variant_masks.file_name(k), chunk)
        )
    ]
    log.info("%d test images in %d shards; %d to compute", len(ids), len(plan), len(todo))
    pending = [i for _k, chunk in todo for i in chunk]
    stream = iter_probs(variants, raw, pending, pcfg, device, with_variants=True)
    start, done = time.perf_counter(), 0
    try:
        for k, chunk in todo:
            writers = [
                staging.NpzWriter(out_dir / variant_masks.file_name(k)),
                staging.NpzWriter(out_dir / shard_name(k)),
            ]
            try:
                for want in chunk:
                    got, prob, packed = next(stream)
                    if got != want:
                        raise DataError(f"internal: expected test image {want}, got {got}")
                    writers[0].add(got, packed)
                    writers[1].add(got, prob)
            except BaseException:
                for w in writers:
                    w.abort()
                raise
            for w in writers:  # variant masks first: the shard's rename marks the pair complete
                w.close()
            if on_shard is not None:
                on_shard(k)
            done += len(chunk)
            log.info(
                "%s: %d images (%.2f images/s so far)",
                shard_name(k),
                len(chunk),
                done / max(time.perf_counter() - start, 1e-9),
            )
    finally:
        stream.close()  # stops the producer thread and the loader workers
    shards = [
        {"file": shard_name(k), "n_images": len(chunk), "bytes": (out_dir / shard_name(k)).stat().st_size}
        for k, chunk in plan
    ]
    return {"shards": shards, "n_computed": len(pending)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", required=True, help="every best.pt of every variant x fold")
    parser.add_argument("--raw", required=True, help="raw Kaggle layout with test/ and sample_submission.csv")
    parser.add_argument("--out-dir", required=True, help="shard directory (results/<name>/test_probs)")
    parser.add_argument("--manifest", required=True, help="manifest JSON to write (results/<name>/test_probs.json)")
    parser.add_argument(
        "--resume-dir",
        default=None,
        help="write the shards here and rename this directory to --out-dir once all are done: a "
        "killed run keeps its finished shards here while --out-dir (a Snakemake output, "
        "removed when a job fails) never holds a partial set; default: --out-dir itself",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="the job's CPU threads: torch gets what the decode workers (predict.workers) leave",
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--state-store",
        default=os.environ.get(state_location.ENV_VAR) or None,
        help="path or fsspec URL where finished shards also go, so that a retry on another node resumes "
        "(inference/shard_store.py); default: $CARVANA_SEG_STATE_STORE, set by the workflow, else none",
    )


def run(args: argparse.Namespace, cfg: dict) -> None:
    predict, folds = build(Predict, cfg["predict"]), build(Folds, cfg["folds"])
    config_variants = [build(Variant, v) for v in cfg["variants"]]
    t0, device = time.perf_counter(), runtime.pick_device(args.device)
    if device.type == "cpu":  # taking turns (stream.phased), the models get every thread: no decode worker runs beside
        torch.set_num_threads(args.threads if phased(device) else torch_threads(args.threads, predict.workers))
    torch.backends.cudnn.benchmark = device.type == "cuda"
    raw, out_dir, manifest = Path(args.raw), Path(args.out_dir), Path(args.manifest)
    ids, n_listed = layout.test_ids(raw)
    if not ids:
        raise DataError(
            f"{raw / layout.SAMPLE_SUBMISSION_CSV}: none of the {n_listed} listed test images is in "
            f"{raw / layout.TEST_DIR}"
        )
    if len(ids) < n_listed:
        log.warning(
            "partial test set: %d of the %d test images listed in sample_submission.csv are present; "
            "predicting those (the submission will not be uploadable)",
            len(ids),
            n_listed,
        )
    variants = load_variants(paths := [Path(p) for p in args.models], config_variants, predict.compile, device)
    work = Path(args.resume_dir) if args.resume_dir else out_dir
    digest = run_hash(paths, predict, config_variants, folds, ids)
    store = state_store.open_store(args.state_store)
    prepare_dir(work, digest)
    push = None
    if store is not None:
        shard_store.pull(store, work, digest)
        push = functools.partial(shard_store.push_shard, store, work)
    result = write_shards(variants, raw, ids, work, predict, device, on_shard=push)
    if work != out_dir:
        staging.replace_dir(work, out_dir)
    if store is not None:
        shard_store.clear(store, work)
    seconds = time.perf_counter() - t0
    total = sum(s["bytes"] for s in result["shards"])
    record = {
        "shard_dir": str(out_dir),
        "shard_dir_rel": os.path.relpath(out_dir.resolve(), manifest.resolve().parent),
        "shards": result["shards"],
        "n_images": len(ids),
        "n_listed": n_listed,
        "partial": len(ids) < n_listed,
        "n_computed": result["n_computed"],
        "n_reused": len(ids) - result["n_computed"],
        "seconds": round(seconds, 3),
        "images_per_s": round(result["n_computed"] / seconds, 3),
        "bytes_total": total,
        "bytes_per_image": round(total / len(ids), 1),
        "hash": digest,
        "config_hash": config_hash(cfg),
        "models": [str(p) for p in paths],
        "tta_hflip": predict.tta_hflip,
        # what the served ensemble (inference.service) must apply to give this run's masks
        "edge_refine": asdict(predict.edge_refine),
        "weights": {v.name: v.weight for v in variants},
        "device": f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device),
        "variant_masks": {
            "files": [variant_masks.file_name(k) for k in range(len(result["shards"]))],
            "variants": [v.name for v in variants],
            "scale": variant_masks.SCALE,
            "threshold": variant_masks.THRESHOLD,
        },
    }
    staging.write_text(manifest, json.dumps(record, indent=2) + "\n")
    log.info(
        "ensemble: %d images (%d computed) in %.1f s, %.2f images/s, %.0f bytes/image",
        len(ids),
        result["n_computed"],
        seconds,
        record["images_per_s"],
        record["bytes_per_image"],
    )
