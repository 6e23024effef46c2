"""Which on-disk format should the resize cache use? Read speed (random access, 1 process) and disk size.

Usage: python benchmarks/resize_cache_format.py [--real ../shared/carvana-sample] [--size 1024x1024] [--n 32]
Candidates: one uint8 .npy per split read through a memory map (what resize_cache uses), one PNG per image,
one JPEG (q95) per image, and one compressed .npz per image. Prints a table: ms/image to read image + mask,
MB/image on disk, and whether the format is lossless.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from carvana_seg.core.layout import parse_size
from carvana_seg.data.resize_cache import resize_image, resize_mask


def sample(real: Path | None, n: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    if real is not None:
        from carvana_seg.core.images import read_image, read_mask

        paths = sorted((real / "train").glob("*.jpg"))[:n]
        imgs = [resize_image(read_image(p), size) for p in paths]
        masks = [resize_mask(read_mask(real / "train_masks" / (p.stem + "_mask.gif")), size) for p in paths]
    else:
        rng = np.random.default_rng(0)
        w, h = size
        yy, xx = np.mgrid[0:h, 0:w]
        imgs, masks = [], []
        for _ in range(n):
            m = ((((xx - w / 2) / (w / 3)) ** 2 + ((yy - h / 2) / (h / 4)) ** 2) <= 1).astype(np.uint8)
            img = cv2.GaussianBlur(rng.integers(150, 255, (h, w, 3), dtype=np.uint8), (0, 0), 3)
            img[m == 1] //= 3
            imgs.append(img)
            masks.append(resize_mask(m, size))
    return np.stack(imgs), np.stack(masks)


def bench(name: str, write, read, n: int, tmp: Path, lossless: bool) -> tuple[str, float, float, bool]:
    write()
    size = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file() and name in p.name)
    order = np.random.default_rng(1).permutation(n)
    t0 = time.perf_counter()
    for _ in range(2):
        for i in order:
            read(int(i))
    ms = (time.perf_counter() - t0) / (2 * n) * 1e3
    return name, ms, size / n / 1e6, lossless


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--real", type=Path, default=None)
    ap.add_argument("--size", default="1024x1024")
    ap.add_argument("--n", type=int, default=32)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    imgs, masks = sample(args.real, args.n, parse_size(args.size))
    n = len(imgs)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)

        def w_npy():
            np.save(tmp / "npy_img.npy", imgs)
            np.save(tmp / "npy_mask.npy", masks)

        mm = {}

        def r_npy(i):
            if not mm:
                mm["i"] = np.load(tmp / "npy_img.npy", mmap_mode="r")
                mm["m"] = np.load(tmp / "npy_mask.npy", mmap_mode="r")
            return np.array(mm["i"][i]), np.array(mm["m"][i])

        def w_files(ext, params):
            def w():
                for i in range(n):
                    cv2.imwrite(str(tmp / f"{ext}_{i}_img.{ext}"), imgs[i][..., ::-1], params)
                    cv2.imwrite(str(tmp / f"{ext}_{i}_mask.png"), masks[i])

            return w

        def r_files(ext):
            return lambda i: (
                cv2.imread(str(tmp / f"{ext}_{i}_img.{ext}")),
                cv2.imread(str(tmp / f"{ext}_{i}_mask.png"), 0),
            )

        def w_npz():
            for i in range(n):
                np.savez_compressed(tmp / f"npz_{i}.npz", img=imgs[i], mask=masks[i])

        def r_npz(i):
            with np.load(tmp / f"npz_{i}.npz") as z:
                return z["img"], z["mask"]

        rows.append(bench("npy", w_npy, r_npy, n, tmp, True))
        rows.append(bench("png", w_files("png", [cv2.IMWRITE_PNG_COMPRESSION, 1]), r_files("png"), n, tmp, True))
        rows.append(bench("jpg", w_files("jpg", [cv2.IMWRITE_JPEG_QUALITY, 95]), r_files("jpg"), n, tmp, False))
        rows.append(bench("npz", w_npz, r_npz, n, tmp, True))
    print(f"resize-cache formats at {args.size}, {n} images ({'real' if args.real else 'synthetic'}), 1 process")
    print(f"{'format':8} {'read ms/img':>12} {'MB/img':>8} {'lossless':>9}")
    for name, ms, mb, lossless in rows:
        print(f"{name:8} {ms:12.2f} {mb:8.2f} {str(lossless):>9}")


if __name__ == "__main__":
    main()
