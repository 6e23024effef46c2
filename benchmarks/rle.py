"""RLE encode/decode vs the straightforward numpy version on 1918x1280 masks; prints a table.

Usage: python benchmarks/rle.py [--real ../shared/carvana-sample] [--n 20]
Masks: real GIFs when --real is given, else car-like ellipses. Outputs are checked identical.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _timing import per_item_ms

from carvana_seg.core import rle


def encode_reference(mask: np.ndarray) -> str:
    """The straightforward numpy encoder (the usual Kaggle kernel); kept as the benchmark baseline."""
    pixels = mask.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def decode_reference(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """The straightforward numpy decoder; kept as the benchmark baseline."""
    s = rle.split()
    starts, lengths = (np.asarray(x, dtype=int) for x in (s[0::2], s[1::2]))
    starts -= 1
    img = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    for lo, hi in zip(starts, starts + lengths):
        img[lo:hi] = 1
    return img.reshape(shape)


def masks(real: Path | None, n: int) -> list[np.ndarray]:
    if real is not None:
        from carvana_seg.core.images import read_mask

        return [read_mask(p) for p in sorted((real / "train_masks").glob("*.gif"))[:n]]
    yy, xx = np.mgrid[0:1280, 0:1918]
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        rx, ry = rng.uniform(400, 800), rng.uniform(200, 400)
        out.append((((xx - 959) / rx) ** 2 + ((yy - 700) / ry) ** 2 <= 1).astype(np.uint8))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--real", type=Path, default=None)
    ap.add_argument("--n", type=int, default=20)
    args = ap.parse_args()
    ms = masks(args.real, args.n)
    texts = [rle.encode(m) for m in ms]
    assert texts == [encode_reference(m) for m in ms], "encoders disagree"
    shape = ms[0].shape
    assert all(np.array_equal(rle.decode(t, shape), decode_reference(t, shape)) for t in texts)
    rows = [
        ("encode", per_item_ms(encode_reference, ms), per_item_ms(rle.encode, ms)),
        (
            "decode",
            per_item_ms(lambda t: decode_reference(t, shape), texts),
            per_item_ms(lambda t: rle.decode(t, shape), texts),
        ),
    ]
    print(
        f"{'op':8} {'reference ms':>13} {'carvana_seg ms':>15} {'speed-up':>9}   "
        f"({len(ms)} masks {shape[1]}x{shape[0]})"
    )
    for op, ref, ours in rows:
        print(f"{op:8} {ref:13.2f} {ours:15.2f} {ref / ours:8.2f}x")


if __name__ == "__main__":
    main()
