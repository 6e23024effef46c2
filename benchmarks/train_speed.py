"""Training images/s per variant, and the share of a training step spent waiting for the data loader.

    python benchmarks/train_speed.py [--config config/demo.yaml] [--size 1024x1024 ...] [--workers 0 2]
                                     [--steps 12] [--device auto] [--amp] [--channels-last] [--compile]
                                     [--loader-only] [--layout ../shared/carvana-sample]

For every variant of the config (or every ``--size``, with the config's first variant as the template) this
writes a synthetic resize cache (noisy ellipse "cars", the real cache format), then times, one after another:

* loader:   the training DataLoader alone (memmap read, albumentations, collation), images/s;
* model:    ``train_step`` (forward, loss, backward, the config's optimizer: AdamW for config/config.yaml) on random
            tensors of the same batch, images/s;
* pipeline: the two together as the ``train`` stage runs them, images/s, and the data share: the fraction of the
            wall time the loop spent blocked on the loader (``data_share`` in every metrics.csv). 0 = never starved.

``--layout DIR`` reads a Kaggle training layout instead of the synthetic cache: each sample's JPEG and GIF mask are
decoded and resized by the loader workers (``LayoutDataset``), as round two reads its pseudo-labelled test photos;
point it at real photos (e.g. ``../shared/carvana-sample``) for the real decode cost.
``--amp/--channels-last/--compile`` switch bf16 autocast (on a CPU only where bf16 is native), channels-last and
``torch.compile`` on (they default to off here, so a GPU run can measure them one at a time against fp32 eager).
Not a pytest test.
"""

from __future__ import annotations

import argparse
import copy
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from carvana_seg.models import model as modelmod
from carvana_seg.models.runtime import mixed_precision, pick_device
from carvana_seg.pipeline import config as cfgmod
from carvana_seg.settings.build import build
from carvana_seg.settings.train import Augment, Loss
from carvana_seg.training.augment import build_augment
from carvana_seg.training.dataset import CacheDataset, LayoutDataset, worker_init
from carvana_seg.training.loop import train_step
from carvana_seg.training.losses import BceDiceLoss

ROOT = Path(__file__).resolve().parents[1]


def make_cache(root: Path, n: int, width: int, height: int, seed: int = 0) -> tuple[Path, list[str]]:
    """A resize cache of ``n`` car-like images at ``width`` x ``height`` (the format resize_cache.build writes)."""
    rng = np.random.default_rng(seed)
    out = root / f"{width}x{height}"
    out.mkdir(parents=True)
    images = np.lib.format.open_memmap(out / "images.npy", "w+", np.uint8, (n, height, width, 3))
    masks = np.lib.format.open_memmap(out / "masks.npy", "w+", np.uint8, (n, height, width))
    yy, xx = np.mgrid[0:height, 0:width]
    for k in range(n):
        rx, ry = width * rng.uniform(0.25, 0.4), height * rng.uniform(0.2, 0.35)
        car = ((xx - width / 2) / rx) ** 2 + ((yy - height / 2) / ry) ** 2 <= 1
        img = rng.normal(200, 20, (height, width, 3))
        img[car] = rng.normal(rng.uniform(30, 150), 25, (int(car.sum()), 3))
        images[k] = np.clip(img, 0, 255).astype(np.uint8)
        masks[k] = car.astype(np.uint8) * 255
    images.flush(), masks.flush()
    ids = [f"{k:012x}_01" for k in range(n)]
    (out / "ids.txt").write_text("".join(f"{i}\n" for i in ids))
    return out, ids


def batches(loader: DataLoader):
    """The loader's batches forever (epoch after epoch), like a training run longer than one epoch."""
    while True:
        yield from loader


def setup(variant: dict, device: torch.device, args: argparse.Namespace, tc: dict):
    """(model, criterion, optimizer, scaler): the objects ``train`` builds (its optimizer, ``train.optimizer``, and
    cudnn.benchmark on CUDA, as the stage sets them), with the benchmark's switches."""
    from carvana_seg.training import optim as optimmod

    torch.backends.cudnn.benchmark = device.type == "cuda"
    model = modelmod.build_model(variant["arch"], variant["encoder"], None, variant["name"]).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if args.compile else model
    opt = optimmod.build_optimizer(model.parameters(), tc["optimizer"], variant["lr"], tc["weight_decay"])
    fp16 = args.amp and device.type == "cuda" and not torch.cuda.is_bf16_supported()
    return (
        step_model,
        BceDiceLoss.from_config(build(Loss, tc["loss"])),
        opt,
        torch.amp.GradScaler(device.type, enabled=fp16),
    )


def timed_steps(step, source, steps: int, warmup: int, device: torch.device) -> tuple[float, float, int]:
    """Run ``warmup`` then ``steps`` steps of ``step(x, y)`` over ``source``; (seconds, seconds waiting, images)."""
    wait, images = 0.0, 0
    for k in range(warmup + steps):
        if k == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0, wait, images = time.perf_counter(), 0.0, 0
        t_wait = time.perf_counter()
        x, y = next(source)
        wait += time.perf_counter() - t_wait
        step(x, y)
        images += len(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, wait, images


def bench_variant(
    variant: dict, tc: dict, workers: int, device: torch.device, args: argparse.Namespace, tmp: Path
) -> dict:
    w, h, bs = variant["width"], variant["height"], args.batch_size or variant["batch_size"]
    augment = build_augment(build(Augment, tc["augment"]), seed=0)
    if args.layout:
        ds = LayoutDataset(args.layout, (w, h), augment)
    else:
        cache = tmp / f"{w}x{h}"
        ids = (cache / "ids.txt").read_text().split() if cache.is_dir() else make_cache(tmp, args.images, w, h)[1]
        ds = CacheDataset(cache, ids, augment)
    loader = DataLoader(
        ds,
        bs,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        worker_init_fn=worker_init,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
    )
    # The loader alone.
    secs, _, n = timed_steps(lambda x, y: None, batches(loader), args.steps, 2, torch.device("cpu"))
    loader_ips = n / secs
    row = {
        "variant": variant["name"],
        "size": f"{w}x{h}",
        "batch": bs,
        "workers": workers,
        "loader": loader_ips,
        "model": float("nan"),
        "pipeline": float("nan"),
        "data_share": float("nan"),
    }
    if args.loader_only:
        return row
    # The model alone, on random tensors of the same shape and dtype (uint8 photos, uint8 coverage masks).
    model, criterion, opt, scaler = setup(variant, device, args, tc)
    model.train()
    x = torch.randint(0, 256, (bs, 3, h, w), dtype=torch.uint8)
    y = (torch.rand(bs, 1, h, w) > 0.5).to(torch.uint8) * 255  # uint8 coverage, as the dataset yields it

    amp = mixed_precision(device, args.amp, args.amp)  # as training: a CPU only with native bf16 (train.amp_cpu)

    def step(xb, yb):
        train_step(model, xb, yb, criterion, opt, scaler, device, amp, args.channels_last)

    def random_batches():
        while True:
            yield x, y

    # Alternate model-only and pipeline runs; best of ``--repeats`` each, so warm-up and a busy machine bias neither.
    model_ips, pipe_ips, share = 0.0, 0.0, float("nan")
    for _ in range(args.repeats):
        secs, _, n = timed_steps(step, random_batches(), args.steps, 2, device)
        model_ips = max(model_ips, n / secs)
        secs, wait, n = timed_steps(step, batches(loader), args.steps, 2, device)
        if n / secs > pipe_ips:
            pipe_ips, share = n / secs, wait / secs
    return dict(row, model=model_ips, pipeline=pipe_ips, data_share=share)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "config" / "demo.yaml"))
    ap.add_argument(
        "--size", nargs="*", default=[], help="WxH sizes (first variant as template); default: the config's"
    )
    ap.add_argument(
        "--workers", type=int, nargs="*", default=None, help="DataLoader workers (default: train.num_workers)"
    )
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=2, help="alternating model-only/pipeline runs (best of each)")
    ap.add_argument("--images", type=int, default=64, help="images in the synthetic cache")
    ap.add_argument(
        "--layout",
        default=None,
        metavar="DIR",
        help="Kaggle training layout decoded per sample (round two's pseudo-labels) instead of a cache",
    )
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument(
        "--amp",
        action="store_true",
        help="bf16 autocast on CUDA, and on a CPU with native bf16 (as train.amp / train.amp_cpu)",
    )
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument(
        "--loader-only",
        action="store_true",
        help="time the DataLoader only (images/s per worker count at sizes a CPU cannot train)",
    )
    args = ap.parse_args()
    cfg = cfgmod.load(args.config)
    tc = cfg["train"]
    variants = cfg["variants"]
    if args.size:
        variants = []
        for text in args.size:
            w, h = (int(v) for v in text.lower().split("x"))
            variants.append(
                dict(copy.deepcopy(cfg["variants"][0]), name=f"{cfg['variants'][0]['name']}@{text}", width=w, height=h)
            )
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    print(
        f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, GPU: {gpu}, "
        f"torch {torch.__version__}; amp={args.amp} channels_last={args.channels_last} compile={args.compile}; "
        f"best of {args.repeats} x {args.steps} timed steps after 2 warm-up steps; config {args.config}; "
        f"source {args.layout or 'synthetic resize cache'}"
    )
    print(
        f"{'variant':24} {'size':>10} {'batch':>5} {'workers':>7} {'loader img/s':>12} {'model img/s':>11} "
        f"{'pipeline img/s':>14} {'data share':>10} {'pipe/model':>10}"
    )
    with tempfile.TemporaryDirectory(prefix="train_speed_") as tmp:
        for v in variants:
            for workers in args.workers if args.workers is not None else [tc["num_workers"]]:
                r = bench_variant(v, tc, workers, device, args, Path(tmp))
                print(
                    f"{r['variant']:24} {r['size']:>10} {r['batch']:>5} {r['workers']:>7} {r['loader']:12.1f} "
                    f"{r['model']:11.2f} {r['pipeline']:14.2f} {r['data_share']:10.3f} "
                    f"{r['pipeline'] / r['model']:10.3f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
