"""The throughput table: what a device achieves in model FLOP/s, and what a DataLoader worker feeds.

Model rows turn planned FLOPs into hours. The ``cpu`` row was measured on the development machine (2 shared cores,
``benchmarks/plan_throughput.py --threads 1``: resnet34 U-Net at 128x128, batch 2, in the planner's FLOP units);
it is per core, the way the CPU profile runs model jobs (one thread each, one per core). No GPU was lent to this
project's sessions, so every GPU row is an **assumption**: the vendor's dense bf16/fp16 tensor TFLOP/s times an
assumed model FLOP utilisation (``TRAIN_UTIL``, ``INFER_UTIL``: a conv U-Net at ~1 Mpx is bound by memory
traffic in batch norm, activations and the decoder's upsampling far more than a transformer). Measure a row with
``benchmarks/plan_throughput.py --device cuda --size 1024x1024 --batch-size 4`` and put it here, marked measured.

Loader rows: CPU milliseconds per training sample in one DataLoader worker, measured here on the real sample photos
(``time.process_time`` of ``Dataset.__getitem__`` with the competition's augmentation, plus the batch transfer to
the main process: the 1-worker wall time of ``benchmarks/train_speed.py --loader-only`` on a quiet machine minus
the item time). Per worker: ``1000 / ms`` images/s.
"""

from __future__ import annotations

from dataclasses import dataclass

from carvana_seg.pipeline.errors import ConfigError

TRAIN_UTIL, INFER_UTIL = 0.20, 0.25


@dataclass(frozen=True)
class Device:
    name: str
    train_flops: float  # achieved FLOP/s of a training step
    infer_flops: float  # achieved FLOP/s of a forward pass
    measured: bool
    source: str


def _gpu(name: str, peak_tflops: float, source: str) -> Device:
    return Device(
        name,
        peak_tflops * 1e12 * TRAIN_UTIL,
        peak_tflops * 1e12 * INFER_UTIL,
        False,
        f"assumed: {peak_tflops:g} TFLOP/s dense ({source}) x {TRAIN_UTIL:.0%} train / {INFER_UTIL:.0%} "
        "predict utilisation",
    )


DEVICES: dict[str, Device] = {
    d.name: d
    for d in (
        Device(
            "cpu",
            0.031e12,
            0.039e12,
            True,
            "measured per core on the dev machine (1 thread, 2 shared cores; benchmarks/plan_throughput.py)",
        ),
        _gpu("h100", 989, "H100 SXM bf16, NVIDIA datasheet"),
        _gpu("h200", 989, "H200 SXM bf16, NVIDIA datasheet"),
        _gpu("a100", 312, "A100 bf16, NVIDIA datasheet"),
        _gpu("l40s", 362, "L40S bf16, NVIDIA datasheet"),
        _gpu("l4", 121, "L4 bf16, NVIDIA datasheet"),
        _gpu("a10", 125, "A10 bf16, NVIDIA datasheet"),
        _gpu("v100", 125, "V100 fp16, NVIDIA datasheet"),
        _gpu("t4", 65, "T4 fp16, NVIDIA datasheet"),
    )
}

# ms of one worker per training sample = per_mpx x network megapixels (+ per_photo_mpx x photo megapixels where
# the sample is decoded from its JPEG): the memmapped cache (7.1-10.6 ms item + 19-25 ms transfer at 1.0-1.6 Mpx)
# and a JPEG + GIF layout (37-42 ms item, dominated by the full-size decode and INTER_AREA resize, + transfer).
CACHE_MS_PER_MPX = 23.0
TRANSFER_MS_PER_MPX = 16.0
DECODE_MS_PER_PHOTO_MPX = 15.9
# ms of one ensemble decode worker per test photo Mpx: the JPEG decode (11.5 ms for 1918x1280 here; the
# competition's sizes need a full decode) plus one INTER_AREA resize from the photo per network size (~22 ms).
JPEG_MS_PER_MPX = 4.7
RESIZE_MS_PER_PHOTO_MPX = 9.0


def device(name: str) -> Device:
    """The row called ``name`` (case-insensitive); ConfigError listing the table otherwise."""
    try:
        return DEVICES[name.lower()]
    except KeyError:
        raise ConfigError(f"--gpu {name}: not in the throughput table ({', '.join(DEVICES)})") from None


def cache_sample_ms(mpx: float) -> float:
    """One worker's ms per training sample read from the resize cache at ``mpx`` network megapixels."""
    return CACHE_MS_PER_MPX * mpx


def layout_sample_ms(mpx: float, photo_mpx: float) -> float:
    """One worker's ms per sample decoded from a layout's JPEG + GIF (round two's pseudo-labels)."""
    return DECODE_MS_PER_PHOTO_MPX * photo_mpx + TRANSFER_MS_PER_MPX * mpx


def decode_ms(photo_mpx: float, n_sizes: int) -> float:
    """One ensemble decode worker's ms per test photo, resized to ``n_sizes`` network sizes."""
    return (JPEG_MS_PER_MPX + RESIZE_MS_PER_PHOTO_MPX * n_sizes) * photo_mpx
