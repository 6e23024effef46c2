"""The ``oof`` stage: out-of-fold probabilities of one variant x fold, with horizontal-flip TTA.

The fold's validation images are predicted at network resolution from the resize cache (``runtime.predict_probs``,
the same core as the test ensemble), the probabilities are resized back to each photo's original size with
bilinear interpolation and stored as uint8 (``round(p * 255)``) in an ``.npz`` keyed by image id, the format of
``np.savez_compressed``, but written one array at a time so a fold of full-size maps never sits in memory at once.
Per-image Dice at p >= 0.5 (uint8 >= 128) is taken against the original full-resolution mask, so the OOF score
includes the resize error, as Kaggle's score does. The npz feeds the threshold search; the Dice CSV feeds
``oof-table``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from torch import nn

from carvana_seg.core import layout
from carvana_seg.core.images import image_size, read_image, read_mask
from carvana_seg.core.metrics import dice
from carvana_seg.data import resize_cache
from carvana_seg.inference import refine
from carvana_seg.inference.oof_table import DICE_COLUMNS
from carvana_seg.models import runtime
from carvana_seg.pipeline import staging
from carvana_seg.pipeline.errors import DataError
from carvana_seg.settings.build import build
from carvana_seg.settings.predict import EdgeRefine, Predict
from carvana_seg.training.dataset import read_folds, split_ids

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", required=True, help="variant name")
    parser.add_argument("--fold", type=int, required=True, help="fold whose validation images are predicted")
    parser.add_argument("--model", required=True, help="best.pt of this variant x fold")
    parser.add_argument("--folds", required=True, help="folds.csv")
    parser.add_argument("--cache", required=True, help="resize cache at the variant's resolution")
    parser.add_argument("--raw", required=True, help="raw Kaggle layout (original sizes and masks)")
    parser.add_argument("--out", required=True, help="npz of uint8 probabilities at original size, keyed by id")
    parser.add_argument("--out-dice", required=True, help="per-image Dice CSV (img, car, fold, variant, dice)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch on CPU")


def predict_rows(
    models: list[nn.Module],
    images: np.ndarray,
    rows: list[int],
    device: torch.device,
    batch_size: int,
    tta_hflip: bool = True,
    channels_last: bool = False,
) -> Iterator[tuple[int, np.ndarray]]:
    """(row, probability (H, W) float32) for each cached image ``rows``, in order, at network resolution.

    On CUDA each batch goes from the memmap into pinned memory, up and back down without blocking, and a batch's
    results are handed out only once the next batch is queued (one CUDA event per batch, no device-wide sync), so
    the GPU never idles while the CPU resizes and scores; on a CPU it is the plain loop."""
    chunks = [rows[start : start + batch_size] for start in range(0, len(rows), batch_size)]
    if device.type != "cuda":
        for chunk in chunks:
            x = runtime.to_tensor(images[np.asarray(chunk)], device, channels_last=channels_last)
            probs = runtime.predict_probs(models, x, tta_hflip=tta_hflip).cpu().numpy()
            yield from zip(chunk, probs)
        return
    pending = None
    for chunk in chunks:
        host = torch.from_numpy(images[np.asarray(chunk)]).pin_memory()
        x = host.to(device, non_blocking=True).permute(0, 3, 1, 2)
        x = x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()
        probs = runtime.predict_probs(models, x, tta_hflip=tta_hflip)
        out = torch.empty(probs.shape, dtype=torch.float32, pin_memory=True)
        out.copy_(probs, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        if pending is not None:
            yield from _ready(*pending)
        pending = (chunk, out, done, host)  # ``host`` lives until its upload has surely finished
    if pending is not None:
        yield from _ready(*pending)


def _ready(
    chunk: list[int],
    out: torch.Tensor,
    done,
    host: torch.Tensor,  # noqa: ARG001 - kept alive until here
) -> Iterator[tuple[int, np.ndarray]]:
    done.synchronize()
    yield from zip(chunk, out.numpy())


def to_original(prob: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a probability map to ``size`` = (width, height) bilinearly and quantise to uint8 round(p * 255)."""
    p = prob.astype(np.float32, copy=False)
    if (p.shape[1], p.shape[0]) != tuple(size):
        p = cv2.resize(p, tuple(size), interpolation=cv2.INTER_LINEAR)
    return np.clip(np.rint(p * 255.0), 0, 255).astype(np.uint8)


def _postprocess(job: tuple[str, np.ndarray, Path, EdgeRefine]) -> tuple[np.ndarray, float]:
    """Original-size uint8 probabilities of one image (edge-refined with its photo when ``predict.edge_refine``
    asks for it) and its Dice against the full-resolution mask."""
    image_id, prob, raw, refine_cfg = job
    photo = raw / layout.TRAIN_DIR / layout.image_file(image_id)
    if refine.enabled(refine_cfg):
        guided = refine.refine(prob, refine.to_gray(read_image(photo)), refine_cfg)
        full = np.clip(np.rint(guided * 255.0), 0, 255).astype(np.uint8)
        size = (full.shape[1], full.shape[0])
    else:
        size = image_size(photo)
        full = to_original(prob, size)
    truth = read_mask(raw / layout.MASK_DIR / layout.mask_file(image_id))
    if truth.shape != full.shape:
        raise DataError(f"{image_id}: mask is {truth.shape[::-1]}, photo is {size}")
    return full, dice(full >= 128, truth)


def run(args: argparse.Namespace, cfg: dict) -> None:
    pc = build(Predict, cfg["predict"])
    device = runtime.pick_device("auto")
    if device.type == "cpu":
        torch.set_num_threads(max(1, args.threads))
    model, mcfg = _load(args.model, device, args.variant)
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = runtime.maybe_compile(model, pc.compile)

    folds = read_folds(args.folds)
    _, val_ids = split_ids(folds, args.fold)
    images, _, cache_ids = resize_cache.load(Path(args.cache))
    index = {i: k for k, i in enumerate(cache_ids)}
    missing = [i for i in val_ids if i not in index]
    if missing:
        raise DataError(f"{args.cache}: {len(missing)} validation ids not cached, e.g. {missing[:3]}")
    v = mcfg["variant"]
    if (images.shape[2], images.shape[1]) != (v["width"], v["height"]):
        raise DataError(
            f"{args.cache}: cache is {images.shape[2]}x{images.shape[1]}, model {args.model} was "
            f"trained at {v['width']}x{v['height']}"
        )
    rows = [index[i] for i in val_ids]
    raw = Path(args.raw)
    cars = dict(zip(folds["img"], folds["car"]))
    scores: list[float] = []
    with staging.NpzWriter(args.out) as npz, ThreadPoolExecutor(max(1, pc.workers)) as pool:
        preds = predict_rows([model], images, rows, device, pc.batch_size, pc.tta_hflip, channels_last)
        batch: list[tuple[str, np.ndarray, Path, EdgeRefine]] = []
        for n, (row, prob) in enumerate(preds, 1):
            batch.append((cache_ids[row], prob, raw, pc.edge_refine))
            if len(batch) == pc.batch_size or n == len(rows):
                for (image_id, *_), (full, d) in zip(batch, pool.map(_postprocess, batch)):
                    npz.add(image_id, full)
                    scores.append(d)
                batch = []
    table = pd.DataFrame(
        {"img": val_ids, "car": [cars[i] for i in val_ids], "fold": args.fold, "variant": args.variant, "dice": scores},
        columns=DICE_COLUMNS,
    )
    staging.write_text(Path(args.out_dice), table.to_csv(index=False))
    log.info(
        "variant %s fold %d: %d OOF images (tta_hflip=%s, edge_refine=%s), mean Dice %.5f at original size",
        args.variant,
        args.fold,
        len(table),
        pc.tta_hflip,
        pc.edge_refine.method,
        table["dice"].mean(),
    )


def _load(path: str, device: torch.device, variant: str) -> tuple[nn.Module, dict]:
    """Load ``best.pt`` and check it belongs to ``variant``."""
    from carvana_seg.models.model import load_model

    model, mcfg = load_model(path, device)
    trained = mcfg["variant"]["name"]  # load_checkpoint checked that it is there
    if trained != variant:
        raise DataError(f"{path}: checkpoint is of variant '{trained}', not '{variant}'")
    return model, mcfg
