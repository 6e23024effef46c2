"""Test-time throughput of the streaming ensemble vs. its models alone, and peak RSS for N and 8N test images.

    python benchmarks/test_time.py [--n 8] [--multiples 1 2 4 8] [--width 1918 --height 1280] [--folds 3] ...
    python benchmarks/test_time.py --results results/demo --photos data/demo/raw/test   # after make demo

Fabricates test photos at the given size and random-init checkpoints of the demo config's variants (or takes a
finished run's trained checkpoints and real photos: random-init maps are noise, which deflates ~10x slower than a
trained model's, and noisy JPEGs decode slower than photos), runs the ``ensemble`` stage code (decoding,
flip-TTA over every fold model, resize back, weighted mean, uint8 shards) in a fresh process for N and for 8N
images (and any other ``--multiples`` of N: the peak-RSS table), and times the same models on random tensors of
the same batch size, alternating with the stage (``--repeats``).
The ratio on the last line is what the rest of the pipeline costs: 1.0 means the models are never starved.
Not a pytest test (pytest only collects ``tests/``).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def fabricate_photos(root: Path, n: int, width: int, height: int) -> None:
    """``n`` test photos in ``root/test``: noisy ellipse 'cars' (noise decodes slower than a studio photo)."""
    from carvana_seg.core.images import write_jpeg

    rng = np.random.default_rng(0)
    (root / "test").mkdir(parents=True)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.clip(rng.normal(200, 20, (height, width, 3)), 0, 255).astype(np.uint8)
    for i in range(n):
        img = base.copy()
        rx, ry = width * rng.uniform(0.25, 0.4), height * 0.3
        car = ((xx - width / 2) / rx) ** 2 + ((yy - height / 2) / ry) ** 2 <= 1
        img[car] = rng.integers(0, 150, 3)
        write_jpeg(root / "test" / f"{i:012x}_01.jpg", img, quality=90)


def fabricate(
    root: Path, n: int, width: int, height: int, folds: int, config: Path = ROOT / "config" / "demo.yaml"
) -> tuple[list[Path], dict]:
    """``n`` test photos (``fabricate_photos``), the stage config and one random-init checkpoint per variant x fold."""
    from carvana_seg.models.model import build_model, save_checkpoint
    from carvana_seg.pipeline import config as cfgmod

    variants = [dict(v, encoder_weights=None, weight=1.0) for v in cfgmod.load(config)["variants"]]
    fabricate_photos(root, n, width, height)
    paths = []
    for v in variants:
        for f in range(folds):
            paths.append(root / "models" / v["name"] / f"fold{f}" / "best.pt")
            save_checkpoint(paths[-1], build_model(v["arch"], v["encoder"], None, v["name"]), {"variant": v})
    cfg = {"name": "bench", "variants": variants, "folds": {"k": max(2, folds), "use": list(range(folds))}}
    return paths, cfg


def from_results(root: Path, n: int, results: Path, photos: Path | None) -> tuple[list[Path], dict]:
    """The trained round-one checkpoints of a results directory (``results/demo`` after ``make demo``) and ``n``
    photos from ``photos`` (cycled when fewer), so maps, shard compression and decoding are a real run's."""
    from carvana_seg.models.model import load_checkpoint

    paths = sorted(Path(results).glob("models/*/fold*/best.pt"))
    if not paths:
        raise SystemExit(f"{results}: no models/*/fold*/best.pt (run the DAG first, e.g. make demo)")
    variants: dict[str, dict] = {}
    for path in paths:
        v = load_checkpoint(path)["config"]["variant"]
        variants.setdefault(v["name"], v)
    folds = sorted({int(path.parent.name.removeprefix("fold")) for path in paths})
    (root / "models").symlink_to(Path(results).resolve() / "models")
    if photos is not None:
        sources = sorted(Path(photos).glob("*.jpg"))
        if not sources:
            raise SystemExit(f"{photos}: no *.jpg photos")
        (root / "test").mkdir(parents=True)
        for i in range(n):
            (root / "test" / f"{i:012x}_01.jpg").symlink_to(sources[i % len(sources)].resolve())
    cfg = {"name": "bench", "variants": list(variants.values()), "folds": {"k": max(2, len(folds)), "use": folds}}
    return paths, cfg


def model_only(variants: list, pcfg, n: int, device: torch.device) -> float:
    """Seconds for flip-TTA over every fold model of every variant on ``n`` random images, run in a thread
    like the ensemble's producer (same batch, same channels-last uint8 tensors, no I/O at all)."""
    from carvana_seg.models import runtime

    bs, tta = pcfg.batch_size, pcfg.tta_hflip
    batches = [
        torch.randint(0, 256, (bs, v.size[1], v.size[0], 3), dtype=torch.uint8, device=device).permute(0, 3, 1, 2)
        for v in variants
    ]
    seconds = []

    def work() -> None:
        t0 = time.perf_counter()
        for v, x in zip(variants, batches):
            for s in range(0, n, bs):
                runtime.predict_probs(v.models, x[: min(bs, n - s)], tta).float().cpu()
        seconds.append(time.perf_counter() - t0)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    return seconds[0]


def saturated_bytes(width: int, height: int, n: int = 4) -> float:
    """Shard bytes/image for maps like a trained model's (0/255 but for a soft car edge): random-init models
    give noisy maps that compress far worse, so this is the number to plan disk space with."""
    import cv2

    from carvana_seg.pipeline.staging import NpzWriter

    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        writer = NpzWriter(Path(tmp) / "shard.npz")
        for i in range(n):
            m = np.zeros((height, width), np.float32)
            cv2.ellipse(
                m,
                (width // 2, height // 2),
                (int(width * rng.uniform(0.25, 0.4)), int(height * 0.3)),
                0,
                0,
                360,
                1.0,
                -1,
            )
            writer.add(f"{i:012x}_01", np.rint(cv2.GaussianBlur(m, (0, 0), 2.0) * 255).astype(np.uint8))
        writer.close()
        return (Path(tmp) / "shard.npz").stat().st_size / n


def child(args: argparse.Namespace) -> None:
    """Run the ensemble stage code on the first ``--child`` images; print timings and peak RSS as JSON.

    With ``--model-only`` the stage pass and the same models alone alternate ``--repeats`` times: each ratio pairs
    two passes a few seconds apart, so a machine whose speed drifts (a shared VM's does, by 10-20 %) biases
    neither side; the median ratio is reported. Peak RSS is read after the first stage pass: the pipeline's alone."""
    from carvana_seg.inference import ensemble
    from carvana_seg.models import runtime

    root, n = Path(args.root), args.child
    raw = root / f"raw{n}"
    raw.mkdir(exist_ok=True)
    if not (raw / "test").exists():
        (raw / "test").symlink_to(root / "test")
    ids = sorted(p.stem for p in (root / "test").glob("*.jpg"))[:n]
    (raw / "sample_submission.csv").write_text("img,rle_mask\n" + "".join(f"{i}.jpg,1 1\n" for i in ids))
    from carvana_seg.pipeline import config as cfgmod
    from carvana_seg.settings.build import build
    from carvana_seg.settings.predict import Predict
    from carvana_seg.settings.variants import Variant

    cfg = cfgmod.validate_slice("ensemble", json.loads((root / "cfg.json").read_text()))
    config, predict = [build(Variant, v) for v in cfg["variants"]], build(Predict, cfg["predict"])
    device = runtime.pick_device(args.device)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    variants = ensemble.load_variants(sorted((root / "models").glob("*/*/best.pt")), config, predict.compile, device)
    t1 = time.perf_counter()
    write_s, model_s = [], []
    for r in range(args.repeats if args.model_only else 1):
        out = root / f"probs{n}_{r}"
        ensemble.prepare_dir(out, f"bench{n}")
        start = time.perf_counter()
        result = ensemble.write_shards(variants, raw, ids, out, predict, device)
        write_s.append(time.perf_counter() - start)
        if r == 0:
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            rss_workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if args.model_only:
            model_s.append(model_only(variants, predict, n, device))
    size = sum(s["bytes"] for s in result["shards"])
    ratios = [m / w for m, w in zip(model_s, write_s)]
    print(
        json.dumps(
            {
                "n": n,
                "load_s": t1 - t0,
                "write_s": float(np.median(write_s)),
                "bytes_per_image": size / n,
                "max_rss_mib": rss,
                "max_rss_workers_mib": rss_workers,
                "model_only_s": float(np.median(model_s)) if model_s else None,
                "ratios": ratios,
            }
        )
    )


def _child_json(root: Path, args: argparse.Namespace, *flags: str) -> dict:
    cmd = [
        sys.executable,
        __file__,
        *flags,
        "--root",
        str(root),
        "--device",
        args.device,
        "--threads",
        str(args.threads),
        "--repeats",
        str(args.repeats),
    ]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])


def main() -> None:
    from carvana_seg.inference import stream
    from carvana_seg.models import runtime

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8, help="N: the small run; the large run has 8N images")
    parser.add_argument(
        "--multiples",
        type=int,
        nargs="+",
        default=[1, 8],
        help="test-set sizes, in multiples of N, for the peak-RSS table (the largest also times the models alone)",
    )
    parser.add_argument("--width", type=int, default=1918)
    parser.add_argument("--height", type=int, default=1280)
    parser.add_argument("--folds", type=int, default=3, help="fold models per variant")
    parser.add_argument(
        "--config",
        type=Path,
        default=ROOT / "config" / "demo.yaml",
        help="whose variants to fabricate (config/config.yaml: the competition's, for a GPU)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="time a finished run's trained models (e.g. results/demo) instead of random-init ones: their maps "
        "compress like a real run's, not like noise",
    )
    parser.add_argument(
        "--photos",
        type=Path,
        default=None,
        help="test photos to use (e.g. data/demo/raw/test) instead of fabricated noisy ones; with --results",
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="alternating stage / model-only passes of the largest run (median)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1, help="decode worker processes")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        return child(args)
    with tempfile.TemporaryDirectory(prefix="bench-test-time-") as tmp:
        root = Path(tmp)
        sizes = sorted({args.n * m for m in args.multiples} | {args.n, 8 * args.n})
        if args.results is not None:
            paths, cfg = from_results(root, sizes[-1], args.results, args.photos)
            if args.photos is None:
                fabricate_photos(root, sizes[-1], args.width, args.height)
        else:
            paths, cfg = fabricate(root, sizes[-1], args.width, args.height, args.folds, args.config)
        cfg["predict"] = {
            "tta_hflip": True,
            "batch_size": args.batch_size,
            "workers": args.workers,
            "shard_size": args.n,
        }
        (root / "cfg.json").write_text(json.dumps(cfg))
        runs = {
            n: _child_json(root, args, "--child", str(n), *(["--model-only"] if n == sizes[-1] else [])) for n in sizes
        }
        big = runs[sizes[-1]]
        pipeline, models = big["n"] / big["write_s"], big["n"] / big["model_only_s"]
        ratios = sorted(big["ratios"])
    device = runtime.pick_device(args.device)
    cpu, turns = device.type == "cpu", stream.phased(device)
    schedule = (
        "taking turns with the models (CPU)"
        if turns
        else f"overlapped, {args.workers} decode workers{' (CARVANA_SEG_FINISH_THREADS)' if cpu else ''}"
    )
    names = ", ".join(f"{v['name']} {v['width']}x{v['height']}" for v in cfg["variants"])
    print(
        f"setup: device={args.device} threads={args.threads} images "
        f"{args.photos or f'{args.width}x{args.height} fabricated'}, variants [{names}] "
        f"x {len(cfg['folds']['use'])} folds ({args.results or 'random-init'}), flip-TTA, batch {args.batch_size}, "
        f"shard {args.n}, schedule: {schedule}"
    )
    small = runs[args.n]
    print(
        f"{'images':>7} {'seconds':>8} {'images/s':>9} {'peak RSS main MiB':>18} {'decode worker MiB':>18} "
        f"{'main vs N':>10}"
    )
    for r in runs.values():
        if turns:  # no decode worker: what RUSAGE_CHILDREN saw is a forked helper (nvidia-smi), not a stage process
            r["max_rss_workers_mib"] = float("nan")
    for n, r in runs.items():
        print(
            f"{n:7d} {r['write_s']:8.2f} {n / r['write_s']:9.2f} {r['max_rss_mib']:18.0f} "
            f"{r['max_rss_workers_mib']:18.0f} {r['max_rss_mib'] / small['max_rss_mib']:10.3f}"
        )
    print(
        f"peak RSS (main process / decode worker): N={args.n}: {small['max_rss_mib']:.0f} / "
        f"{small['max_rss_workers_mib']:.0f} MiB, 8N={8 * args.n}: {runs[8 * args.n]['max_rss_mib']:.0f} / "
        f"{runs[8 * args.n]['max_rss_workers_mib']:.0f} MiB"
    )
    print(
        f"shard bytes/image: {big['bytes_per_image']:.0f} "
        f"({'trained models' if args.results else 'random-init models, noisy maps'}); "
        f"{saturated_bytes(args.width, args.height):.0f} for trained-like saturated maps"
    )
    print(f"pipeline: {pipeline:.2f} images/s; model-only (random tensors, same batch): {models:.2f} images/s")
    print(
        f"pipeline/model-only: {float(np.median(ratios)):.3f} (median of {len(ratios)} paired passes; "
        f"{', '.join(f'{r:.3f}' for r in ratios)})"
    )


if __name__ == "__main__":
    main()
