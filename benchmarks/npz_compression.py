"""zlib level for the streamed npz files (OOF maps, test-probability shards): write time vs bytes; prints a table.

    python benchmarks/npz_compression.py [--real ../shared/carvana-sample]
    python benchmarks/npz_compression.py --shards 'results/demo/test_probs/shard_*.npz'

Maps: uint8 probability maps at 1918x1280. ``--shards`` reads a run's own shards (real model output); ``--real``
blurs real GIF masks into trained-model-like maps (saturated, soft 2-px edge); otherwise synthetic ellipses.
Each map is written through ``staging.NpzWriter`` at every level; the files are read back and checked equal.
"""

from __future__ import annotations

import argparse
import glob
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from carvana_seg.pipeline.staging import NPZ_COMPRESSLEVEL, NpzWriter


def maps(real: Path | None, shards: str | None, n: int) -> tuple[str, list[np.ndarray]]:
    if shards:
        out = []
        for path in sorted(glob.glob(shards)):
            with np.load(path) as npz:
                out += [npz[k] for k in npz.files[: n - len(out)]]
            if len(out) >= n:
                break
        return f"shards {shards}", out
    if real is not None:
        from carvana_seg.core.images import read_mask

        paths = sorted((real / "train_masks").glob("*.gif"))[:n]
        soft = [cv2.GaussianBlur(read_mask(p).astype(np.float32), (0, 0), 2.0) for p in paths]
        return "real masks, blurred", [np.rint(m * 255).astype(np.uint8) for m in soft]
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        m = np.zeros((1280, 1918), np.float32)
        cv2.ellipse(m, (959, 700), (int(rng.uniform(400, 800)), int(rng.uniform(200, 400))), 0, 0, 360, 1.0, -1)
        out.append(np.rint(cv2.GaussianBlur(m, (0, 0), 2.0) * 255).astype(np.uint8))
    return "synthetic ellipses", out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", type=Path, default=None)
    ap.add_argument("--shards", default=None)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 3, 6])
    args = ap.parse_args()
    what, arrays = maps(args.real, args.shards, args.n)
    print(
        f"npz write of {len(arrays)} maps {arrays[0].shape[1]}x{arrays[0].shape[0]} uint8 ({what}); "
        f"pipeline level: {NPZ_COMPRESSLEVEL}"
    )
    print(f"{'level':>5} {'ms/map':>8} {'kB/map':>8} {'maps/s (1 thread)':>18}")
    with tempfile.TemporaryDirectory() as tmp:
        for level in args.levels:
            path = Path(tmp) / f"l{level}.npz"
            t0 = time.perf_counter()
            with NpzWriter(path, compresslevel=level) as writer:
                for k, arr in enumerate(arrays):
                    writer.add(f"m{k}", arr)
            secs = time.perf_counter() - t0
            with np.load(path) as npz:
                assert all(np.array_equal(npz[f"m{k}"], arr) for k, arr in enumerate(arrays))
            per = secs / len(arrays)
            print(f"{level:5d} {per * 1e3:8.1f} {path.stat().st_size / len(arrays) / 1e3:8.1f} {1 / per:18.1f}")


if __name__ == "__main__":
    main()
