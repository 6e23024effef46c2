"""The ``train`` stage: one variant on one fold, resumable after a kill.

``run`` turns the command line into a :class:`TrainJob` of plain values and the config slice into typed
:class:`TrainSettings`, and calls :func:`train`, which reads as the
steps it takes: build the trainer (``loop.build_trainer``), resume it from ``<state-dir>/last.pt`` or start it
(``state``), run the epochs (``loop.train_epoch``, ``loop.evaluate``) saving the state every
``train.state_every_epochs`` epochs (or ``state_every_seconds``), and write the
declared outputs. The state dir is not a Snakemake output, so it survives a failed or killed job; the next run
resumes from the following epoch when nothing that shapes training changed, and starts from zero (saying why)
otherwise. ``best.pt`` and ``metrics.csv`` are written only once training has finished, so a killed job never
leaves a file that looks complete.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from carvana_seg.models import encoder_weights
from carvana_seg.models import model as modelmod
from carvana_seg.pipeline import staging, state_location
from carvana_seg.pipeline.errors import CarvanaSegError, DataError
from carvana_seg.settings.build import build
from carvana_seg.settings.train import Train
from carvana_seg.settings.variants import Variant
from carvana_seg.training import loop, state, state_log, state_store
from carvana_seg.training.state import STATE_FILE, STATE_FORMAT, Progress
from carvana_seg.training.tensorboard_log import Board

log = logging.getLogger(__name__)

# data_share: the fraction of the training epoch spent blocked on the DataLoader (0 = the model never waits).
METRIC_COLUMNS = ["epoch", "train_loss", "val_loss", "val_dice", "lr", "seconds", "images_per_s", "data_share"]


@dataclass(frozen=True)
class TrainJob:
    """What one ``train`` job reads and writes (plain values; ``run`` builds it from the command line)."""

    variant: str
    fold: int
    folds: Path
    cache: Path
    out_model: Path
    out_metrics: Path
    state_dir: Path
    threads: int = 2
    extra_layouts: tuple[str, ...] = ()
    init_from: str | None = None
    tensorboard: str | None = None
    state_store: str | None = None  # a path or fsspec URL where the state also goes (training.state_store)
    max_epochs_this_run: int | None = None  # testing aid: stop as if killed after this many epochs

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainJob:
        return cls(
            args.variant,
            args.fold,
            Path(args.folds),
            Path(args.cache),
            Path(args.out_model),
            Path(args.out_metrics),
            Path(args.state_dir),
            args.threads,
            tuple(args.extra_layout),
            args.init_from,
            args.tensorboard,
            args.state_store,
            args.max_epochs_this_run,
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", required=True, help="variant name (selects the variants entry)")
    parser.add_argument("--fold", type=int, required=True, help="validation fold; training uses the other cars")
    parser.add_argument("--folds", required=True, help="folds.csv")
    parser.add_argument("--cache", required=True, help="resize cache directory at the variant's resolution")
    parser.add_argument("--out-model", required=True, help="best.pt to write when training ends")
    parser.add_argument("--out-metrics", required=True, help="metrics.csv to write when training ends")
    parser.add_argument("--state-dir", required=True, help="resume state directory (kept across failed runs)")
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="the job's CPU threads: torch gets what the DataLoader workers (train.num_workers) leave",
    )
    parser.add_argument(
        "--extra-layout",
        action="append",
        default=[],
        metavar="DIR",
        help="Kaggle training layout whose images are all added to the training set, never to "
        "validation, decoded by the DataLoader (pseudo-labelled test images); repeatable",
    )
    parser.add_argument(
        "--init-from",
        default=None,
        metavar="BEST_PT",
        help="start from this checkpoint's weights (same variant) instead of random init",
    )
    parser.add_argument(
        "--tensorboard",
        default=None,
        metavar="DIR",
        help="TensorBoard run directory for live curves (tensorboard_log); none when omitted",
    )
    parser.add_argument(
        "--state-store",
        default=os.environ.get(state_location.ENV_VAR) or None,
        metavar="URL",
        help="also keep the resume state and TensorBoard run at this path or fsspec URL, under their own paths, "
        "and resume from there (a retry on another node without a shared filesystem); default "
        "$CARVANA_SEG_STATE_STORE (the workflow sets it: pipeline/state_location.py), else none",
    )
    # Testing aid: stop (as if killed) after N epochs of this invocation, outputs unwritten.
    parser.add_argument("--max-epochs-this-run", type=int, default=None, help=argparse.SUPPRESS)


def _init_weights(model: torch.nn.Module, path: str, variant: Variant) -> None:
    """Load a ``best.pt`` of the same variant into ``model`` (architecture and size must match)."""
    ckpt = modelmod.load_checkpoint(path)  # checks that config.variant holds the keys compared here
    v = ckpt["config"]["variant"]
    same = all(v[k] == getattr(variant, k) for k in ("name", "arch", "encoder", "width", "height"))
    if not same:
        raise DataError(
            f"{path}: checkpoint of variant {v['name']} ({v['width']}x{v['height']}), "
            f"cannot initialise {variant.name} ({variant.width}x{variant.height})"
        )
    model.load_state_dict(modelmod.with_order(ckpt["state_dict"]))
    # epoch and val_dice: extras save_checkpoint's caller may leave out (a checkpoint made elsewhere) -> None
    log.info("initialised from %s (epoch %s, val Dice %s)", path, ckpt.get("epoch"), ckpt.get("val_dice"))


@dataclass(frozen=True)
class TrainSettings:
    """The typed settings of one ``train`` job, and its validated slice as given (``record``): that goes into
    checkpoints and the resume state's identity unchanged, the typed settings drive everything else."""

    seed: int
    train: Train
    variant: Variant
    record: dict

    @classmethod
    def from_slice(cls, cfg: dict) -> TrainSettings:
        """From the validated ``train`` slice (``pipeline.config.validate_slice``: every default filled)."""
        return cls(cfg["seed"], build(Train, cfg["train"]), build(Variant, cfg["variant"]), cfg)


def run(args: argparse.Namespace, cfg: dict) -> None:
    train(TrainJob.from_args(args), TrainSettings.from_slice(cfg))


def train(job: TrainJob, s: TrainSettings) -> None:
    """Train ``job.variant`` on every fold but ``job.fold``: build, resume or start, run the epochs, write outputs."""
    v = s.variant
    # before any data is read: one error naming a missing weights file
    encoder_weights.ensure_available(v.encoder, v.encoder_weights, f"variants.{v.name}.encoder_weights")
    t = loop.build_trainer(s.train, v, s.seed, job.fold, job.folds, job.cache, list(job.extra_layouts), job.threads)
    staging.sweep(job.state_dir / STATE_FILE, job.out_model, job.out_metrics)  # temporaries of a killed run
    store = state_store.open_store(job.state_store)
    if store is not None:
        store.pull(job.state_dir, job.tensorboard)
    ident = state.identity(
        s.record, job.fold, t.train_ids, t.val_ids, state.extra_identity(list(job.extra_layouts), job.init_from)
    )
    ident.update(state.input_identity(job.cache))
    saved = state.load_state(job.state_dir, ident)
    handler = state_log.attach(job.state_dir, resumed=saved is not None)  # keeps the earlier epochs' lines
    try:
        progress = _resume_or_start(t, saved, job, s)
        _log_setup(t, job, s.variant)
        _run_epochs(t, progress, job, s, ident, store)
        _write_outputs(job, s.record, t.model, progress)
    finally:
        state_log.detach(handler)


def _finished(progress: Progress, s: TrainSettings) -> bool:
    return progress.epoch >= s.variant.epochs or progress.bad_epochs >= s.train.early_stopping_patience


def _resume_or_start(t: loop.Trainer, saved: dict | None, job: TrainJob, s: TrainSettings) -> Progress:
    """The saved state put back in place (weights, optimizer, schedule, scaler, RNGs), or a fresh start (from
    ``--init-from`` weights when given)."""
    if saved is None:
        if job.init_from:
            _init_weights(t.model, job.init_from, s.variant)
        return Progress()
    loop.load_trainer_state(t, saved)
    state.set_rng_state(saved["rng"])
    progress = Progress.from_state(saved)
    where = job.state_dir / STATE_FILE
    if _finished(progress, s):
        log.info("state %s holds a finished run (%d epochs); writing its outputs", where, progress.epoch)
    else:
        log.info(
            "resuming from epoch %d (state %s, best val Dice %.5f at epoch %d)",
            progress.epoch + 1,
            where,
            progress.best_dice,
            progress.best_epoch,
        )
    return progress


def _log_setup(t: loop.Trainer, job: TrainJob, variant: Variant) -> None:
    amp = ("fp16" if t.fp16 else "bf16") if t.use_amp else "off"
    log.info(
        "variant %s fold %d: %d train (%d from extra layouts) / %d val images at %dx%d on %s (amp=%s), %d epochs",
        job.variant,
        job.fold,
        len(t.train_ds),
        len(t.train_ds) - len(t.train_ids),
        len(t.val_ds),
        *t.train_ds.size,
        t.device,
        amp,
        variant.epochs,
    )


def _run_epochs(
    t: loop.Trainer,
    progress: Progress,
    job: TrainJob,
    s: TrainSettings,
    ident: dict,
    store: state_store.StateStore | None = None,
) -> None:
    """Train epoch after epoch until the last one or early stopping, saving the resume state as `_state_due` says
    (and sending it to ``store`` once the epoch's log line is written)."""
    epochs, patience = s.variant.epochs, s.train.early_stopping_patience
    board = Board(None if _finished(progress, s) else job.tensorboard, progress.epoch + 1, s.train.tensorboard_images)
    run_epochs, last_write = 0, time.perf_counter()
    while not _finished(progress, s):
        epoch, lr, t0 = progress.epoch + 1, t.opt.param_groups[0]["lr"], time.perf_counter()
        stats = loop.train_epoch(t, epoch, epochs, job.variant)
        progress.nonfinite_total += stats.skipped
        val_loss, val_dice = loop.evaluate(t.fwd, t.val_dl, t.criterion, t.device, t.use_amp, t.channels_last)
        t.sched.after_epoch(val_dice)
        row = _record_epoch(t, progress, epoch, lr, stats, val_loss, val_dice, time.perf_counter() - t0)
        board.epoch(epoch, row, t.model, t.val_ds, t.device)
        saved = _state_due(s, epoch, time.perf_counter() - last_write) or _finished(progress, s)
        if saved:
            state.save_state(
                {
                    **progress.as_dict(),
                    "format": STATE_FORMAT,
                    "identity": ident,
                    "cfg": s.record,
                    **loop.trainer_state(t),
                    "rng": state.rng_state(),
                },
                job.state_dir / STATE_FILE,
            )
            last_write = time.perf_counter()
        log.info(
            "epoch %d/%d: train loss %.4f, val loss %.4f, val Dice %.5f, lr %.2e, %.1f s, %.1f img/s, "
            "%.1f%% waiting for data",
            epoch,
            epochs,
            row["train_loss"],
            val_loss,
            val_dice,
            lr,
            row["seconds"],
            row["images_per_s"],
            100 * row["data_share"],
        )
        if progress.bad_epochs >= patience:
            log.info("early stopping: no val Dice improvement for %d epochs", patience)
        if saved and store is not None:
            store.push(job.state_dir, job.tensorboard)
        run_epochs += 1
        if job.max_epochs_this_run is not None and run_epochs >= job.max_epochs_this_run and not _finished(progress, s):
            raise CarvanaSegError(
                f"stopped after {run_epochs} epoch(s) this run (--max-epochs-this-run); "
                f"state kept in {job.state_dir}, rerun to resume"
            )
    board.close()


def _state_due(s: TrainSettings, epoch: int, since_write: float) -> bool:
    """Whether the resume state is written after ``epoch``: every ``train.state_every_epochs`` epochs, or once
    ``train.state_every_seconds`` have passed since the last write (the last epoch always writes it)."""
    every, budget = s.train.state_every_epochs, s.train.state_every_seconds
    return epoch % every == 0 or (budget is not None and since_write >= budget)


def _record_epoch(
    t: loop.Trainer,
    progress: Progress,
    epoch: int,
    lr: float,
    stats: loop.EpochStats,
    val_loss: float,
    val_dice: float,
    seconds: float,
) -> dict:
    """Update the best weights and early-stopping count; append and return the epoch's metrics row."""
    if val_dice > progress.best_dice:
        progress.best_dice, progress.best_epoch, progress.bad_epochs = val_dice, epoch, 0
        progress.best_model = {k: v.detach().cpu().clone() for k, v in t.model.state_dict().items()}
    else:
        progress.bad_epochs += 1
    row = {
        "epoch": epoch,
        "train_loss": stats.loss,
        "val_loss": val_loss,
        "val_dice": val_dice,
        "lr": lr,
        "seconds": round(seconds, 3),
        "images_per_s": round(stats.images / max(stats.train_seconds, 1e-9), 2),
        "data_share": round(stats.data_seconds / max(stats.train_seconds, 1e-9), 4),
    }
    progress.rows.append(row)
    progress.epoch = epoch
    return row


def _write_outputs(job: TrainJob, cfg: dict, model: torch.nn.Module, progress: Progress) -> None:
    """Write metrics.csv and best.pt (the best epoch's weights, with the validated slice ``cfg`` that made them),
    each atomically, after training has finished."""
    staging.write_text(job.out_metrics, pd.DataFrame(progress.rows, columns=METRIC_COLUMNS).to_csv(index=False))
    model.load_state_dict(progress.best_model)
    modelmod.save_checkpoint(
        job.out_model,
        model,
        cfg,
        epoch=progress.best_epoch,
        val_dice=progress.best_dice,
        fold=job.fold,
        nonfinite_steps=progress.nonfinite_total,
    )
    log.info("best val Dice %.5f at epoch %d -> %s", progress.best_dice, progress.best_epoch, job.out_model)
