"""The training loop of one ``train`` job: the objects it shares (model, optimizer, loaders...), one epoch, validation.

``train.train`` builds a :class:`Trainer` (``build_trainer``), resumes or starts it, and calls :func:`train_epoch` and
:func:`evaluate` once per epoch. Every epoch reseeds the shuffling and augmentation from (seed, fold, epoch), so a
resumed run trains the same epochs an uninterrupted one would. ``train_step`` is shared with the benchmarks, so
they time exactly what training runs.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from carvana_seg.core.metrics import dice_from_counts
from carvana_seg.models import model as modelmod
from carvana_seg.models.runtime import autocast, maybe_compile, mixed_precision, pick_device
from carvana_seg.pipeline.errors import CarvanaSegError, DataError
from carvana_seg.pipeline.resources import torch_threads
from carvana_seg.settings.train import Train
from carvana_seg.settings.variants import Variant
from carvana_seg.training import optim as optimmod
from carvana_seg.training.augment import build_augment
from carvana_seg.training.dataset import EpochSampler, EpochSeeded, build_datasets, read_folds, split_ids, worker_init
from carvana_seg.training.deferred import Tally, to_device, train_step_deferred
from carvana_seg.training.losses import BceDiceLoss

log = logging.getLogger(__name__)


@dataclass
class Trainer:
    """Everything one training run shares between setup, resume and the epoch loop."""

    model: torch.nn.Module
    fwd: torch.nn.Module  # the model, or its torch.compile form (same parameters; state dicts come from ``model``)
    criterion: BceDiceLoss
    opt: torch.optim.Optimizer
    sched: Any  # optim.Schedule
    scaler: torch.amp.GradScaler
    train_ds: Dataset
    val_ds: Dataset
    train_dl: DataLoader
    val_dl: DataLoader
    gen: torch.Generator
    device: torch.device
    use_amp: bool
    fp16: bool
    channels_last: bool
    seed: int
    max_bad_steps: int
    train_ids: list[str]
    val_ids: list[str]
    sync_every: int = 1  # train.sync_every_steps
    sampler: Any = None  # dataset.EpochSampler when the training loader has persistent workers, else None
    loader_started: bool = False  # whether the persistent workers' iterator exists (drawn its first base seed)


@dataclass
class EpochStats:
    """What one epoch of training measured (validation comes after)."""

    loss: float
    images: int
    train_seconds: float
    data_seconds: float
    skipped: int  # steps skipped for a non-finite loss


def subsample(ids: list[str], limit: int | None) -> list[str]:
    """At most ``limit`` of the sorted ``ids``, evenly spaced (so every car and view keeps its share); all if None.

    The per-epoch validation only picks the best epoch and drives early stopping; on a 2-core CPU a full fold costs
    a third of an epoch's training, and the ``oof`` stage scores every image of the fold anyway."""
    if not limit or len(ids) <= limit:
        return ids
    picks = np.unique(np.linspace(0, len(ids) - 1, int(limit)).round().astype(int))
    return [ids[i] for i in picks]


def build_trainer(
    tc: Train,
    variant: Variant,
    base_seed: int,
    fold: int,
    folds_csv: str | Path,
    cache: str | Path,
    extra_layouts: list[str],
    threads: int,
) -> Trainer:
    """Device, fold split, datasets and loaders, a freshly seeded model, loss, optimizer, schedule and grad scaler.

    The order is part of the result: the model's random init draws from the RNGs seeded here."""
    device = pick_device(tc.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(torch_threads(threads, tc.num_workers))
    use_amp = mixed_precision(device, tc.amp, tc.amp_cpu)
    channels_last = (cuda or use_amp) and tc.channels_last
    train_ids, val_ids = split_ids(read_folds(folds_csv), fold)
    if not train_ids or not val_ids:
        raise DataError(f"fold {fold}: {len(train_ids)} training and {len(val_ids)} validation images")
    val_ids = subsample(val_ids, tc.val_max_images)
    seed = int(base_seed) * 1000 + fold
    train_ds, val_ds = build_datasets(cache, train_ids, val_ids, build_augment(tc.augment, seed), extra_layouts)
    if train_ds.size != (variant.width, variant.height):
        raise DataError(
            f"{cache}: cache is {train_ds.size}, variant '{variant.name}' needs {variant.width}x{variant.height}"
        )
    bs, workers = variant.batch_size, tc.num_workers
    gen = torch.Generator()
    sampler = None
    if workers:  # persistent workers (no re-fork per epoch), reseeded per epoch through the sampler's keys
        sampler = EpochSampler(len(train_ds), gen)
        train_dl = DataLoader(
            EpochSeeded(train_ds),
            bs,
            sampler=sampler,
            num_workers=workers,
            generator=gen,
            worker_init_fn=worker_init,
            drop_last=len(train_ds) > bs,
            pin_memory=cuda,
            persistent_workers=True,
        )
    else:
        train_dl = DataLoader(
            train_ds, bs, shuffle=True, num_workers=0, generator=gen, drop_last=len(train_ds) > bs, pin_memory=cuda
        )
    val_dl = DataLoader(val_ds, bs, shuffle=False, num_workers=workers, pin_memory=cuda, persistent_workers=workers > 0)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model = modelmod.build_model(variant.arch, variant.encoder, variant.encoder_weights, variant.name).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt, sched = optimmod.from_config(model, variant, tc, len(train_dl))
    fp16 = use_amp and cuda and not torch.cuda.is_bf16_supported()
    return Trainer(
        model=model,
        fwd=maybe_compile(model, tc.compile),
        criterion=BceDiceLoss.from_config(tc.loss),
        opt=opt,
        sched=sched,
        scaler=torch.amp.GradScaler("cuda", enabled=fp16),
        train_ds=train_ds,
        val_ds=val_ds,
        train_dl=train_dl,
        val_dl=val_dl,
        gen=gen,
        device=device,
        use_amp=use_amp,
        fp16=fp16,
        channels_last=channels_last,
        seed=seed,
        max_bad_steps=tc.max_nonfinite_steps,
        train_ids=train_ids,
        val_ids=val_ids,
        sync_every=tc.sync_every_steps,
        sampler=sampler,
    )


def load_trainer_state(t: Trainer, state: dict) -> None:
    """Put a saved state's weights, optimizer, schedule, grad scaler (and, by the caller, RNGs) back in place."""
    t.model.load_state_dict(state["model"])
    t.opt.load_state_dict(state["optimizer"])
    t.sched.load_state_dict(state["scheduler"])
    t.scaler.load_state_dict(state["scaler"])


def trainer_state(t: Trainer) -> dict:
    """The live objects' part of the resume state, as plain CPU data."""
    return {
        "model": {k: v.detach().cpu() for k, v in t.model.state_dict().items()},
        "optimizer": t.opt.state_dict(),
        "scheduler": t.sched.state_dict(),
        "scaler": t.scaler.state_dict(),
    }


def _seed_epoch(t: Trainer, epoch: int) -> None:
    """Reseed shuffling, worker seeds and (without workers) the augmentation from (seed, epoch).

    With persistent workers the DataLoader draws the workers' base seed from ``gen`` only once, for the first
    epoch; later epochs draw it here, in the same place of ``gen``'s stream, and hand it to the workers through
    the sampler's keys, so every epoch shuffles and augments exactly as with workers re-forked per epoch."""
    t.gen.manual_seed(t.seed * 100_003 + epoch)  # shuffling and worker seeds of this epoch
    t.train_ds.reseed(t.seed * 100_019 + epoch)  # augmentation when num_workers == 0
    if t.sampler is not None:
        peek = torch.Generator()
        peek.set_state(t.gen.get_state())
        t.sampler.base_seed = int(torch.empty((), dtype=torch.int64).random_(generator=peek).item())
        if t.loader_started:
            torch.empty((), dtype=torch.int64).random_(generator=t.gen)  # what a fresh iterator would draw
        t.loader_started = True


def _fail_nonfinite(t: Trainer, consecutive: int, epoch: int, variant: str) -> None:
    raise CarvanaSegError(
        f"{consecutive} consecutive non-finite losses (train.max_nonfinite_steps={t.max_bad_steps}) "
        f"in epoch {epoch}: lower variants.{variant}.lr or set train.amp: false"
    )


def train_epoch(t: Trainer, epoch: int, epochs: int, variant: str) -> EpochStats:
    """One pass over the training set, reseeded from (seed, epoch). A step whose loss is not finite is skipped;
    ``max_bad_steps`` of them in a row stop the run with one error naming the setting to change.

    With ``sync_every`` > 1 (``train.sync_every_steps``) nothing is read back per step: ``_deferred_epoch``."""
    t0 = time.perf_counter()
    _seed_epoch(t, epoch)
    t.model.train()
    if t.sync_every > 1:
        return _deferred_epoch(t, epoch, epochs, variant, t0)
    loss_sum, n_seen, consecutive, skipped, data_seconds = 0.0, 0, 0, 0, 0.0
    bar = tqdm(t.train_dl, desc=f"epoch {epoch}/{epochs}", mininterval=5.0, leave=False)
    t_ready = time.perf_counter()
    for x, y in bar:
        data_seconds += time.perf_counter() - t_ready  # blocked on the loader (the loss sync ends each step)
        loss = train_step(t.fwd, x, y, t.criterion, t.opt, t.scaler, t.device, t.use_amp, t.channels_last)
        if loss is None:
            consecutive, skipped = consecutive + 1, skipped + 1
            log.warning("epoch %d: non-finite loss, step skipped (%d in a row)", epoch, consecutive)
            if consecutive >= t.max_bad_steps:
                _fail_nonfinite(t, consecutive, epoch, variant)
        else:
            consecutive = 0
            t.sched.after_step()
            loss_sum += loss * x.shape[0]
            n_seen += x.shape[0]
            bar.set_postfix(loss=f"{loss_sum / n_seen:.4f}", refresh=False)
        t_ready = time.perf_counter()
    bar.close()
    return EpochStats(loss_sum / max(n_seen, 1), n_seen, time.perf_counter() - t0, data_seconds, skipped)


def _deferred_epoch(t: Trainer, epoch: int, epochs: int, variant: str, t0: float) -> EpochStats:
    """``train_epoch`` without a host sync per step (``training.deferred``): the tallies are read every
    ``sync_every`` steps and at the end; the schedule advances on every step. ``data_seconds`` then counts only
    the waits on the loader the GPU's queued work did not hide."""
    tally, data_seconds, seen_skips = Tally(t.device), 0.0, 0
    bar = tqdm(t.train_dl, desc=f"epoch {epoch}/{epochs}", mininterval=5.0, leave=False)
    t_ready = time.perf_counter()
    for step, (x, y) in enumerate(bar, 1):
        data_seconds += time.perf_counter() - t_ready
        loss, finite = train_step_deferred(
            t.fwd, x, y, t.criterion, t.opt, t.scaler, t.device, t.use_amp, t.channels_last
        )
        t.sched.after_step()
        tally.add(loss, finite, x.shape[0])
        if step % t.sync_every == 0:
            seen_skips, loss_sum, n = _check_deferred(t, tally, seen_skips, epoch, variant)
            bar.set_postfix(loss=f"{loss_sum / max(n, 1):.4f}", refresh=False)
        t_ready = time.perf_counter()
    bar.close()
    skipped, loss_sum, n = _check_deferred(t, tally, seen_skips, epoch, variant)
    return EpochStats(loss_sum / max(n, 1), n, time.perf_counter() - t0, data_seconds, skipped)


def _check_deferred(t: Trainer, tally: Tally, seen: int, epoch: int, variant: str) -> tuple[int, float, int]:
    """The host read of ``_deferred_epoch``: warn about new non-finite steps, stop on too long a run of them;
    (non-finite steps so far, loss sum, images seen)."""
    loss_sum, n, total, longest = tally.read()
    if total > seen:
        log.warning(
            "epoch %d: %d non-finite loss(es) since the last check, their gradients zeroed (longest run %d)",
            epoch,
            total - seen,
            longest,
        )
    if longest >= t.max_bad_steps:
        _fail_nonfinite(t, longest, epoch, variant)
    return total, loss_sum, n


def evaluate(model, loader, criterion, device, use_amp: bool, channels_last: bool) -> tuple[float, float]:
    """(mean loss, mean per-image Dice at p >= 0.5 vs coverage >= 128/255, both-empty = 1) on the val set."""
    model.eval()
    loss_sum, n, counts = 0.0, 0, []
    with torch.inference_mode():
        for x, y in loader:
            x, y = to_device(x, y, device, channels_last)
            with autocast(device, use_amp):
                logits = model(x)
            loss_sum += float(criterion(logits.float(), y)) * x.shape[0]
            n += x.shape[0]
            pred = logits[:, 0] >= 0
            truth = (y[:, 0] * 255.0).round() >= 128  # y: coverage 0..1 (float32(m) / 255 of the uint8 mask)
            counts.append(torch.stack([(pred & truth).sum((1, 2)), pred.sum((1, 2)), truth.sum((1, 2))], 1).cpu())
    c = torch.cat(counts).numpy()
    return loss_sum / n, float(dice_from_counts(c[:, 0], c[:, 1], c[:, 2]).mean())


def train_step(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    criterion,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    use_amp: bool,
    channels_last: bool,
) -> float | None:
    """One optimisation step on a batch; the loss, or None (and no step) when it is not finite.

    Shared with benchmarks/train_speed.py so that the benchmark times exactly what training runs. Reading the loss
    back synchronises with the GPU, so the time until the next batch arrives is the data loader's alone."""
    x, y = to_device(x, y, device, channels_last)
    with autocast(device, use_amp):
        logits = model(x)
    loss = criterion(logits, y)
    opt.zero_grad(set_to_none=True)
    if not torch.isfinite(loss):
        return None
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return float(loss.detach())


_to_device = to_device  # the name the benchmarks and tests have used
