"""Load test of ``python -m carvana_seg serve`` on loopback: latency, throughput, the served rate against the model
path alone, memory over many requests, PyTorch against ONNX Runtime.

For each results directory and backend a server starts as a subprocess on a free 127.0.0.1 port (CPU, its default
concurrency, a queue deep enough that nothing is refused); clients on ``--concurrency`` threads each send photos
(``POST /v1/cutout``, format png: the full RGBA cut-out) until ``--requests`` are done or ``--max-seconds`` pass.
Printed per row: p50 / p95 latency, images/s, and that rate over the rate of ``Service.prob`` alone (decode,
models, upsampling; what ``predict_prob`` was) on the same photos in this process with the server's thread count.
Then the server's peak RSS (VmHWM) after ``--rss-requests`` requests in all (goal: the later one <= 1.1x the first).

    python benchmarks/serve_load.py --models results/demo [results/sample] [--requests 40] [--backends torch onnx]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI sets it: the in-process baseline must not spin
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import requests


def photos(models: Path, width: int, height: int, n: int = 8) -> list[bytes]:
    """The run's own test photos (data/<name>/raw/test) when present at this size, else smooth synthetic JPEGs."""
    found = sorted((models.parents[1] / "data" / models.name / "raw" / "test").glob("*.jpg"))[:n]
    out = [p.read_bytes() for p in found]
    if out and cv2.imdecode(np.frombuffer(out[0], np.uint8), cv2.IMREAD_COLOR).shape[:2] == (height, width):
        return out
    yy, xx = np.mgrid[0:height, 0:width]
    imgs = []
    for k in range(n):
        rgb = np.dstack([(xx + 40 * k) % 256, yy * 255 // height, np.full_like(xx, 200)]).astype(np.uint8)
        cv2.ellipse(rgb, (width // 2, height // 2), (width // 3, height // 5), 0, 0, 360, (30, 40, 60 + 10 * k), -1)
        imgs.append(cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    return imgs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(models: Path, backend: str, threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "carvana_seg",
            "serve",
            "--models",
            str(models),
            "--port",
            str(port),
            "--device",
            "cpu",
            "--backend",
            backend,
            "--queue",
            "64",
            "--threads",
            str(threads),
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600  # an ONNX backend exports every checkpoint on its first start
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"serve exited: {proc.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{url}: not ready")


def load(url: str, imgs: list[bytes], concurrency: int, n: int, max_s: float) -> tuple[list[float], float, int]:
    """(latencies in s, wall seconds, non-200 answers) of ``n`` requests from ``concurrency`` threads."""
    lat: list[float] = []
    bad = [0]
    counter = iter(range(n))
    lock = threading.Lock()
    stop = time.perf_counter() + max_s

    def client() -> None:
        session = requests.Session()
        while time.perf_counter() < stop:
            with lock:
                k = next(counter, None)
            if k is None:
                return
            t0 = time.perf_counter()
            r = session.post(url + "/v1/cutout", files={"image_file": ("p.jpg", imgs[k % len(imgs)])}, timeout=300)
            with lock:
                lat.append(time.perf_counter() - t0)
                bad[0] += r.status_code != 200

    t0 = time.perf_counter()
    workers = [threading.Thread(target=client) for _ in range(concurrency)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return lat, time.perf_counter() - t0, bad[0]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def model_rate(models: Path, backend: str, imgs: list[bytes], threads: int, n: int) -> float:
    """images/s of ``Service.prob`` alone (no HTTP, no PNG encoding) in this process."""
    import torch

    from carvana_seg.inference.service import Service

    torch.set_num_threads(threads)
    service = Service(models, "cpu", backend)
    service.prob(imgs[0])  # warm-up
    t0 = time.perf_counter()
    for k in range(n):
        service.prob(imgs[k % len(imgs)])
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["results/demo"], help="results directories")
    parser.add_argument("--backends", nargs="+", default=["torch", "onnx"], choices=["torch", "onnx"])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=40, help="requests per concurrency level")
    parser.add_argument("--max-seconds", type=float, default=120, help="per concurrency level")
    parser.add_argument("--rss-requests", nargs=2, type=int, default=[50, 500], metavar=("FIRST", "THEN"))
    parser.add_argument("--width", type=int, default=1918)
    parser.add_argument("--height", type=int, default=1280)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="server torch threads")
    args = parser.parse_args()
    rows, rss = [], []
    for m in map(Path, args.models):
        if not m.is_dir():
            print(f"# {m}: not found, skipped")
            continue
        imgs = photos(m, args.width, args.height)
        for backend in args.backends:
            base = model_rate(m, backend, imgs, args.threads, max(4, min(args.requests, 20)))
            proc, url = start(m, backend, args.threads)
            try:
                load(url, imgs, 1, 2, 60)  # warm-up
                for c in args.concurrency:
                    lat, wall, bad = load(url, imgs, c, args.requests, args.max_seconds)
                    rate = len(lat) / wall
                    q = statistics.quantiles(lat, n=20) if len(lat) > 1 else [lat[0]] * 19
                    rows.append(
                        (
                            m.name,
                            backend,
                            c,
                            len(lat),
                            1000 * statistics.median(lat),
                            1000 * q[18],
                            rate,
                            rate / base,
                            base,
                            bad,
                        )
                    )
                done = 2 + sum(r[3] for r in rows if r[0] == m.name and r[1] == backend)
                first, then = args.rss_requests
                load(url, imgs, 4, max(0, first - done), 1e9)
                a = peak_rss_mb(proc.pid)
                load(url, imgs, 4, then - max(first, done), 1e9)
                rss.append((m.name, backend, first, a, then, peak_rss_mb(proc.pid)))
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    size = f"{args.width}x{args.height}"
    print(f"POST /v1/cutout (format png) on loopback, {size} photos, CPU, server threads {args.threads}")
    print(
        f"{'run':<10} {'backend':<7} {'conc':>4} {'n':>4} {'p50 ms':>8} {'p95 ms':>8} {'img/s':>7} "
        f"{'vs prob':>7} {'prob/s':>7} {'non200':>6}"
    )
    for r in rows:
        print(
            f"{r[0]:<10} {r[1]:<7} {r[2]:>4} {r[3]:>4} {r[4]:>8.0f} {r[5]:>8.0f} {r[6]:>7.2f} {r[7]:>7.2f} "
            f"{r[8]:>7.2f} {r[9]:>6}"
        )
    print(f"{'run':<10} {'backend':<7} {'peak RSS after N requests':>40} {'ratio':>6}")
    for name, backend, n1, a, n2, b in rss:
        print(f"{name:<10} {backend:<7} {f'{n1}: {a:.0f} MB, {n2}: {b:.0f} MB':>40} {b / a:>6.3f}")


if __name__ == "__main__":
    main()
