"""The ``ensemble`` stage: one streaming flip-TTA pass of every model over the test set, into resumable shards.

Each test image is decoded once, by DataLoader workers that also resize it to every variant's resolution, so
the models are never starved. A producer thread runs every fold model of every variant on the batch and its
mirror. Each variant's mean probability is resized back to the original size (INTER_LINEAR) and the weighted
mean over variants taken: on a CPU by the calling thread, as ever; on CUDA by the device (``device_maps``), so
only uint8 crosses the bus, with the bit packing in ``finish_threads`` threads. The calling thread streams the
uint8 maps (``round(p * 255)``) into the current shard, in order.

Shards ``shard_00000.npz`` ... hold ``shard_size`` images each (npz keyed by image id, deflated, written entry by
entry to a temporary file and renamed when complete), so memory stays one batch plus one image whatever the test
set size, and a killed run resumes at the first missing shard. ``shards_meta.json`` records a hash of the model
files and of the settings that change the numbers; a different hash discards the old shards. Beside each shard,
``variants_00000.npz`` ... hold every variant's own binarised mask at 1/4 scale, bit-packed (``variant_masks``),
for the outlier checks; it is written before its shard, and a shard counts as done only when both exist.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import queue
import threading
import time
import zipfile
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from carvana_seg.core import layout
from carvana_seg.core.images import read_image
from carvana_seg.data.resize_cache import load_resized
from carvana_seg.inference import refine, variant_masks
from carvana_seg.inference.batch import device_probs
from carvana_seg.models import runtime
from carvana_seg.pipeline import staging
from carvana_seg.pipeline.config import config_hash, to_json, weight_total
from carvana_seg.pipeline.errors import ConfigError, DataError
from carvana_seg.pipeline.resources import torch_threads
from carvana_seg.settings.build import build
from carvana_seg.settings.folds import Folds
from carvana_seg.settings.predict import EdgeRefine, Predict
from carvana_seg.settings.variants import Variant

log = logging.getLogger(__name__)
META = "shards_meta.json"


def shard_name(k: int) -> str:
    """File name of shard ``k``."""
    return f"shard_{k:05d}.npz"


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


class _TestImages(torch.utils.data.Dataset):
    """A test photo at every distinct network size (decoded once per JPEG reduction factor) and its own size."""

    def __init__(self, raw: Path, ids: list[str], sizes: list[tuple[int, int]], guide: bool = False) -> None:
        self.raw, self.ids, self.sizes, self.guide = Path(raw), ids, sizes, guide

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[int, tuple[int, int], list[np.ndarray], np.ndarray | None]:
        path = self.raw / layout.TEST_DIR / layout.image_file(self.ids[i])
        shape, images = load_resized(path, self.sizes)
        # The edge refinement's guide: the full-resolution grey photo (a second, full decode; only when asked).
        return i, shape, images, (refine.to_gray(read_image(path)) if self.guide else None)


def _collate(items: list) -> tuple[list[int], list[tuple[int, int]], list[torch.Tensor], list]:
    stacks = [torch.from_numpy(np.stack([it[2][k] for it in items])) for k in range(len(items[0][2]))]
    return [it[0] for it in items], [it[1] for it in items], stacks, [it[3] for it in items]


def finalize(
    shape: tuple[int, int],
    probs: list[np.ndarray],
    weights: list[float],
    guide: np.ndarray | None = None,
    refine_cfg: EdgeRefine | None = None,
) -> np.ndarray:
    """Per-variant probabilities at network size -> weighted mean at ``shape`` (H, W) as uint8 round(p*255);
    with ``refine_cfg`` (``predict.edge_refine``) the mean is refined with the grey photo ``guide`` first."""
    h, w = shape
    total = weight_total(weights)
    # OpenCV's fused passes (scaleAdd; convertScaleAbs saturates and rounds half to even, like np.rint) cut this
    # from 13.5 to ~9 ms per 1918x1280 image; it runs once per test image in the ensemble's consumer thread.
    acc = np.zeros((h, w), np.float32)
    for p, wt in zip(probs, weights):
        full = p if p.shape == (h, w) else cv2.resize(p, (w, h), interpolation=cv2.INTER_LINEAR)
        cv2.scaleAdd(np.asarray(full, np.float32), float(255.0 * wt / total), acc, dst=acc)
    if refine.enabled(refine_cfg):
        acc = refine.refine(acc / 255.0, guide, refine_cfg) * 255.0
    return cv2.convertScaleAbs(np.maximum(acc, 0.0, out=acc))  # convertScaleAbs would mirror a negative value


def device_maps(
    shapes: list[tuple[int, int]], probs: list[torch.Tensor], weights: list[float]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``finalize`` and the variant masks' resize on the models' device (CUDA), so only uint8 crosses the bus.

    ``probs``: per variant, (N, h, w) float32 at its network size. Returns per image the (H, W) uint8 mean map
    round(p*255) and the (n_variants, H/4, W/4) uint8 0/1 masks for ``variant_masks``, both still on the device.
    Bilinear with half-pixel centres (``align_corners=False``) is OpenCV's INTER_LINEAR, so the maps match the
    CPU path's up to float rounding; the CPU path itself (``finalize``) is unchanged."""
    import torch.nn.functional as F

    total = weight_total(weights)
    maps, smalls = [], []
    for j, (h, w) in enumerate(shapes):
        own = [p[j : j + 1, None] for p in probs]  # (1, 1, h, w) each
        acc = torch.zeros((1, 1, h, w), dtype=torch.float32, device=own[0].device)
        for p, wt in zip(own, weights):
            full = p if p.shape[-2:] == (h, w) else F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)
            acc.add_(full, alpha=255.0 * wt / total)
        maps.append(acc[0, 0].clamp_(0.0, 255.0).round_().to(torch.uint8))
        hs, ws = variant_masks.small_shape((h, w))
        small = [F.interpolate(p, size=(hs, ws), mode="bilinear", align_corners=False)[0, 0] for p in own]
        smalls.append((torch.stack(small) >= variant_masks.THRESHOLD).to(torch.uint8))
    return maps, smalls


def _cpu_side(
    shape: tuple[int, int],
    own: list[np.ndarray] | None,
    weights: list[float],
    guide: np.ndarray | None,
    pcfg: Predict,
    with_variants: bool,
    ready: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple:
    """One image's CPU work, run in the finishing threads: ``finalize`` and ``variant_masks.pack`` of the network
    size maps ``own`` (CPU path), or only the bit packing of the device's uint8 results ``ready`` (CUDA path)."""
    if ready is not None:
        prob, small = ready
        return (prob, np.packbits(small.astype(bool), axis=-1)) if with_variants else (prob,)
    prob = finalize(shape, own, weights, guide, pcfg.edge_refine)
    return (prob, variant_masks.pack(shape, own)) if with_variants else (prob,)


FINISH_THREADS = 2  # threads for the per-image CPU side (resize, weighted mean, bit packing); cv2 releases the GIL


def finish_threads(cuda: bool) -> int:
    """Threads for the per-image CPU side: ``$CARVANA_SEG_FINISH_THREADS``, else ``FINISH_THREADS`` on CUDA (the
    cores are free while the GPU runs the models) and 0 on a CPU, where the models' own torch threads already fill
    the cores and the work stays in the calling thread, as it always has (0: inline)."""
    raw = os.environ.get("CARVANA_SEG_FINISH_THREADS", "").strip()
    try:
        return max(0, int(raw)) if raw else (FINISH_THREADS if cuda else 0)
    except ValueError as exc:
        raise ConfigError(f"CARVANA_SEG_FINISH_THREADS must be an integer, got {raw!r}") from exc


class _Inline:
    """``ThreadPoolExecutor``'s ``submit``/``shutdown`` run in the calling thread (``finish_threads`` 0)."""

    class _Done:
        def __init__(self, value: tuple) -> None:
            self.value = value

        def result(self) -> tuple:
            return self.value

    def submit(self, fn, *args) -> _Inline._Done:
        return self._Done(fn(*args))

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:  # nothing to stop
        pass


def iter_probs(
    variants: list[LoadedVariant],
    raw: Path,
    ids: list[str],
    pcfg: Predict,
    device: torch.device,
    with_variants: bool = False,
) -> Iterator[tuple]:
    """Yield ``(id, uint8 probability map)`` for ``ids`` in order; at most a few batches are ever in flight.
    ``with_variants`` adds a third item, the packed per-variant masks (``variant_masks.pack``).

    Three kinds of thread: the producer runs the models; ``finish_threads`` threads do each image's CPU side
    (``_cpu_side``; on a CPU by default the calling thread itself); the calling thread writes the shards (zlib),
    in order. On CUDA without edge refinement the
    upsampling and weighted mean run on the device (``device_maps``) and only uint8 maps cross the bus."""
    sizes = sorted({v.size for v in variants})
    slot = [sizes.index(v.size) for v in variants]
    weights = [v.weight for v in variants]
    cuda = device.type == "cuda"
    on_device = cuda and not refine.enabled(pcfg.edge_refine)  # the refinement needs the float mean on the CPU
    loader = torch.utils.data.DataLoader(
        _TestImages(raw, ids, sizes, refine.enabled(pcfg.edge_refine)),
        batch_size=pcfg.batch_size,
        num_workers=pcfg.workers,
        collate_fn=_collate,
        pin_memory=cuda,
    )
    batches = iter(loader)  # workers fork here, in the calling thread, before the producer thread exists
    out: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def put(item: object) -> bool:  # hand ``item`` to the consumer unless it has stopped listening
        while not stop.is_set():
            try:
                out.put(item, timeout=0.5)
                return True
            except queue.Full:
                pass
        return False

    def produce() -> None:
        try:
            for idx, shapes, stacks, guides in batches:
                probs = device_probs(variants, slot, stacks, device, pcfg.tta_hflip)  # shared with predict/serve
                if on_device:
                    maps, smalls = device_maps(shapes, probs, weights)
                    ready = [(m.cpu().numpy(), sm.cpu().numpy()) for m, sm in zip(maps, smalls)]
                    item = (idx, shapes, None, guides, ready)
                else:
                    item = (idx, shapes, [p.cpu().numpy() for p in probs], guides, None)
                if not put(item):
                    return
            put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            put(exc)

    worker = threading.Thread(target=produce, name="ensemble-gpu", daemon=True)
    n_finish = finish_threads(cuda)
    pool = ThreadPoolExecutor(n_finish, thread_name_prefix="ensemble-finish") if n_finish else _Inline()
    in_flight = pcfg.batch_size if n_finish else 0
    pending: deque = deque()
    worker.start()
    try:
        while (item := out.get()) is not None:
            if isinstance(item, BaseException):
                while pending:  # what was computed before the failure still reaches its shard
                    i, fut = pending.popleft()
                    yield (ids[i], *fut.result())
                raise item
            idx, shapes, probs, guides, ready = item
            for j, i in enumerate(idx):
                own = None if probs is None else [p[j] for p in probs]
                pending.append(
                    (
                        i,
                        pool.submit(
                            _cpu_side,
                            shapes[j],
                            own,
                            weights,
                            guides[j],
                            pcfg,
                            with_variants,
                            None if ready is None else ready[j],
                        ),
                    )
                )
            while len(pending) > in_flight:  # in order; at most about two batches of images in flight
                i, fut = pending.popleft()
                yield (ids[i], *fut.result())
        while pending:
            i, fut = pending.popleft()
            yield (ids[i], *fut.result())
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        worker.join()
        batches = None  # drop the loader iterator now: its workers shut down (not `del`: produce() reads the name)


def shard_complete(path: Path, ids: list[str]) -> bool:
    """Whether ``path`` is a finished shard holding exactly ``ids`` (reads only the zip directory)."""
    try:
        with np.load(path) as npz:
            return sorted(npz.files) == sorted(ids)
    except (OSError, ValueError, zipfile.BadZipFile):
        return False


def prepare_dir(out_dir: Path, digest: str) -> None:
    """Create ``out_dir``; discard temporaries, and every shard when ``shards_meta.json`` has another hash."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for tmp in out_dir.glob("*.tmp*"):
        tmp.unlink()
    meta = out_dir / META
    old = json.loads(meta.read_text()).get("hash") if meta.is_file() else None
    if old != digest:
        for p in sorted(out_dir.glob("shard_*.npz")) + sorted(out_dir.glob("variants_*.npz")):
            log.info("discarding stale %s (hash %s, now %s)", p, old, digest)
            p.unlink()
        meta.write_text(json.dumps({"hash": digest}) + "\n")


def write_shards(
    variants: list[LoadedVariant], raw: Path, ids: list[str], out_dir: Path, pcfg: Predict, device: torch.device
) -> dict:
    """Compute every missing shard in order; return per-shard records and how many images were computed."""
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


def run(args: argparse.Namespace, cfg: dict) -> None:
    predict, folds = build(Predict, cfg["predict"]), build(Folds, cfg["folds"])
    config_variants = [build(Variant, v) for v in cfg["variants"]]
    t0, device = time.perf_counter(), runtime.pick_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(torch_threads(args.threads, predict.workers))
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
    prepare_dir(work, digest := run_hash(paths, predict, config_variants, folds, ids))
    result = write_shards(variants, raw, ids, work, predict, device)
    if work != out_dir:
        staging.replace_dir(work, out_dir)
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
