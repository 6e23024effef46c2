"""The serve path's image codecs against kept libraries: RGBA PNG encode, JPEG encode, JPEG decode of a photo.

The PNG rows decided ``serve.compose._png``: fpng since issue 29; JPEG encode and decode stay with OpenCV.

On a real 1918x1280 Carvana photo and its mask (``--photo``/``--mask``, default the first training car of
../shared/carvana-sample; a smooth synthetic photo and an ellipse without it), each candidate runs ``--repeats``
times on ``--threads`` (the server encodes on its inference pool: one photo per thread). Printed per row: median
ms, output size, and whether the output decodes (OpenCV) back to the same pixels (PNG: exactly; JPEG: mean absolute
error against today's path). Only what is installed runs: ``pip install fpng imagecodecs simplejpeg``.

    python benchmarks/encode.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from carvana_seg.core.images import read_mask  # noqa: E402
from carvana_seg.serve import compose  # noqa: E402


def inputs(photo: Path | None, mask: Path | None) -> tuple[bytes, np.ndarray, np.ndarray]:
    """(JPEG bytes, RGB photo, bool mask) of the sample's first training photo, else a synthetic one."""
    sample = ROOT.parent / "shared" / "carvana-sample"
    if photo is None and (sample / "train").is_dir():
        photo = min((sample / "train").glob("*.jpg"))
        mask = sample / "train_masks" / photo.name.replace(".jpg", "_mask.gif")
    if photo is not None:
        data = photo.read_bytes()
        rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        return data, rgb, read_mask(mask).astype(bool)
    yy, xx = np.mgrid[0:1280, 0:1918]
    rgb = np.dstack([xx * 255 // 1918, yy * 255 // 1280, (xx + yy) * 127 // 3198]).astype(np.uint8)
    car = ((xx - 959) / 700) ** 2 + ((yy - 700) / 350) ** 2 < 1
    return cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes(), rgb, car


def opencv_png(rgba: np.ndarray) -> bytes:
    """The serve path's PNG encode before fpng: OpenCV at compression level 1."""
    return cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA), [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes()


def png_candidates() -> dict[str, Callable[[np.ndarray], bytes]]:
    """RGBA array -> PNG bytes; the previous path first, then what compose._png uses now."""
    out: dict[str, Callable[[np.ndarray], bytes]] = {"opencv level 1 (before)": opencv_png}
    if compose.fpng is not None:
        out["fpng (compose._png now)"] = compose._png  # noqa: SLF001
    try:
        import imagecodecs

        out["imagecodecs png level 1, RLE, SUB"] = lambda a: imagecodecs.png_encode(a, level=1, strategy=3, filter=16)
        out["imagecodecs spng"] = imagecodecs.spng_encode
    except ImportError:
        pass
    return out


def jpeg_candidates() -> dict[str, Callable[[np.ndarray], bytes]]:
    """RGB array -> JPEG bytes at quality 92; today's path first."""
    out: dict[str, Callable[[np.ndarray], bytes]] = {"opencv q92 (today)": compose._jpg}  # noqa: SLF001
    try:
        import simplejpeg

        out["simplejpeg q92"] = lambda a: simplejpeg.encode_jpeg(np.ascontiguousarray(a), quality=92, colorspace="RGB")
    except ImportError:
        pass
    try:
        import imagecodecs

        out["imagecodecs jpeg8 q92"] = lambda a: imagecodecs.jpeg8_encode(a, level=92)
    except ImportError:
        pass
    return out


def decode_candidates() -> dict[str, Callable[[bytes], np.ndarray]]:
    out: dict[str, Callable[[bytes], np.ndarray]] = {
        "opencv imdecode (today)": lambda b: cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)
    }
    try:
        import simplejpeg

        out["simplejpeg"] = lambda b: simplejpeg.decode_jpeg(b, colorspace="BGR")
    except ImportError:
        pass
    try:
        import imagecodecs

        out["imagecodecs jpeg8"] = lambda b: imagecodecs.jpeg8_decode(b)[..., ::-1]
    except ImportError:
        pass
    return out


def timed(fn: Callable, arg, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn(arg)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photo", type=Path, default=None)
    ap.add_argument("--mask", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    data, rgb, mask = inputs(args.photo, args.mask)
    rgba = np.dstack([rgb, np.where(mask, 255, 0).astype(np.uint8)])
    print(f"photo {rgb.shape[1]}x{rgb.shape[0]}, JPEG {len(data) / 1e3:.0f} kB, car {mask.mean():.1%} of it")
    print("| step | library | median ms | kB | decodes to |")
    print("|---|---|---:|---:|---|")
    for name, fn in png_candidates().items():
        ms, png = timed(fn, rgba, args.repeats)
        back = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
        same = back is not None and np.array_equal(cv2.cvtColor(back, cv2.COLOR_BGRA2RGBA), rgba)
        verdict = "the same pixels" if same else "DIFFERENT"
        print(f"| RGBA PNG encode | {name} | {ms:.1f} | {len(png) / 1e3:.0f} | {verdict} |")
    base = None
    for name, fn in jpeg_candidates().items():
        ms, jpg = timed(fn, rgb, args.repeats)
        back = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        base = back if base is None else base
        err = np.abs(back.astype(int) - base).mean()
        print(f"| JPEG encode | {name} | {ms:.1f} | {len(jpg) / 1e3:.0f} | {err:.2f} mean abs. difference to today's |")
    ref = None
    for name, fn in decode_candidates().items():
        ms, img = timed(fn, data, args.repeats)
        ref = img if ref is None else ref
        same = np.array_equal(np.ascontiguousarray(img), ref)
        print(f"| JPEG decode | {name} | {ms:.1f} | - | {'the same pixels' if same else 'other pixels'} |")


if __name__ == "__main__":
    main()
