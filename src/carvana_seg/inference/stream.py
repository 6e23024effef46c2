"""How the test ensemble streams: photos decoded at every network size, run through the models, and finished
(upsampled, weighted mean, variant masks) one at a time, in order, with a few batches in flight at most.

``iter_probs`` is the one entry (``ensemble.write_shards`` consumes it). It has two schedules with the same
numbers: on CUDA the CPU work overlaps the GPU's (``_overlapped``: DataLoader workers, a producer thread,
finishing threads); on a CPU it takes turns with the models (``_phased``), since there the models' threads
already fill every core and anything running beside them stalls them (docs/benchmarks.md).
"""

from __future__ import annotations

import os
import queue
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from carvana_seg.core import layout
from carvana_seg.core.images import read_image
from carvana_seg.data.resize_cache import load_resized
from carvana_seg.inference import refine, variant_masks
from carvana_seg.inference.batch import device_probs, variant_probs
from carvana_seg.inference.maps import device_maps, finalize
from carvana_seg.pipeline.errors import ConfigError
from carvana_seg.settings.predict import Predict


class LoadedModels(Protocol):
    """What the stream needs of an ensemble member (``ensemble.LoadedVariant``)."""

    size: tuple[int, int]
    weight: float
    models: list[torch.nn.Module]


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


def phased(device: torch.device) -> bool:
    """Whether the stream takes turns with the models (on a CPU) rather than overlapping them (on CUDA).

    On a CPU the models' torch threads already fill the cores: decoding and finishing beside them (the overlapped
    schedule) leave every parallel region of the models waiting on a descheduled thread, which cost 15-25 % of the
    model throughput on 2 cores (docs/benchmarks.md). Setting ``CARVANA_SEG_FINISH_THREADS`` (0 included) asks for
    the overlapped schedule on a CPU too."""
    return device.type != "cuda" and not os.environ.get("CARVANA_SEG_FINISH_THREADS", "").strip()


FINISH_THREADS = 2  # threads for the per-image CPU side (resize, weighted mean, bit packing); cv2 releases the GIL


def finish_threads(cuda: bool) -> int:
    """Threads for the per-image CPU side of the overlapped schedule: ``$CARVANA_SEG_FINISH_THREADS``, else
    ``FINISH_THREADS`` on CUDA (the cores are free while the GPU runs the models) and 0 on a CPU (0: inline, in the
    calling thread)."""
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
    variants: Sequence[LoadedModels],
    raw: Path,
    ids: list[str],
    pcfg: Predict,
    device: torch.device,
    with_variants: bool = False,
) -> Iterator[tuple]:
    """Yield ``(id, uint8 probability map)`` for ``ids`` in order; at most a few batches are ever in flight.
    ``with_variants`` adds a third item, the packed per-variant masks (``variant_masks.pack``).

    Two schedules, the same numbers (tested): on a CPU the stream takes turns with the models (``phased``), on
    CUDA it overlaps them (``_overlapped``). Either way the calling thread writes the shards (zlib), in order."""
    sizes = sorted({v.size for v in variants})
    plan = _Plan(sizes, [sizes.index(v.size) for v in variants], [v.weight for v in variants], with_variants)
    data = _TestImages(raw, ids, sizes, refine.enabled(pcfg.edge_refine))
    stream = _phased if phased(device) else _overlapped
    yield from stream(variants, data, plan, pcfg, device)


@dataclass(frozen=True)
class _Plan:
    sizes: list[tuple[int, int]]  # the distinct network sizes (W, H), one decoded stack each
    slot: list[int]  # variant i reads stack slot[i]
    weights: list[float]
    with_variants: bool


def _phased(
    variants: Sequence[LoadedModels], data: _TestImages, plan: _Plan, pcfg: Predict, device: torch.device
) -> Iterator[tuple]:
    """The CPU schedule: the models run a batch alone on the cores, then the same number of threads (torch's)
    finish that batch and decode the next one while the calling thread writes; then the models again.

    No DataLoader process: decoding happens in the threads' turn (OpenCV releases the GIL), so ``predict.workers``
    does not apply. One batch is decoded ahead and one finished behind, so memory stays bounded (docs/benchmarks.md)."""
    ids, bs = data.ids, pcfg.batch_size
    pool = ThreadPoolExecutor(max(1, torch.get_num_threads()), thread_name_prefix="ensemble-phase")
    try:
        decoding = [pool.submit(data.__getitem__, i) for i in range(min(bs, len(ids)))]
        for start in range(0, len(ids), bs):
            idx, shapes, stacks, guides = _collate([f.result() for f in decoding])
            probs = variant_probs(variants, plan.slot, stacks, device, pcfg.tta_hflip)
            finishing = [
                pool.submit(
                    _cpu_side, shapes[j], [p[j] for p in probs], plan.weights, guides[j], pcfg, plan.with_variants
                )
                for j in range(len(idx))
            ]
            decoding = [pool.submit(data.__getitem__, i) for i in range(start + bs, min(start + 2 * bs, len(ids)))]
            for i, fut in zip(idx, finishing):
                yield (ids[i], *fut.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _overlapped(
    variants: Sequence[LoadedModels], data: _TestImages, plan: _Plan, pcfg: Predict, device: torch.device
) -> Iterator[tuple]:
    """The CUDA schedule: three kinds of thread at once. The producer runs the models; ``finish_threads``
    threads do each image's CPU side (``_cpu_side``; 0: the calling thread); the calling thread writes. Decoding
    runs in ``predict.workers`` DataLoader processes. Without edge refinement the upsampling and weighted mean run
    on the device (``maps.device_maps``) and only uint8 maps cross the bus."""
    ids, weights, with_variants = data.ids, plan.weights, plan.with_variants
    cuda = device.type == "cuda"
    on_device = cuda and not data.guide  # the refinement needs the float mean on the CPU
    loader = torch.utils.data.DataLoader(
        data,
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
                probs = device_probs(variants, plan.slot, stacks, device, pcfg.tta_hflip)  # shared with predict/serve
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
