"""The ``train`` stage: one variant on one fold, resumable after a kill.

After every epoch the whole training state (weights, optimizer, scheduler, grad scaler, best weights, early-stopping
counter, metrics so far, RNG states, config) goes atomically to ``<state-dir>/last.pt``. The state dir is not a
Snakemake output, so it survives a failed or killed job; the next run resumes from the following epoch when the
state's config, fold split, cache files and training code equal the current ones, and starts from zero (saying
why) otherwise. The declared
outputs, ``best.pt`` and ``metrics.csv``, are written only once training has finished, so a killed job never leaves
a file that looks complete. Every epoch reseeds the shuffling and augmentation from (seed, fold, epoch): a
resumed run trains the same epochs an uninterrupted one would.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import logging
import os
import random
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from carvana_seg.core import layout
from carvana_seg.core.metrics import dice_from_counts
from carvana_seg.models import encoder_weights
from carvana_seg.models import model as modelmod
from carvana_seg.models.runtime import autocast, maybe_compile, pick_device
from carvana_seg.pipeline import staging
from carvana_seg.pipeline.errors import CarvanaSegError, DataError
from carvana_seg.pipeline.resources import torch_threads
from carvana_seg.training.augment import build_augment
from carvana_seg.training.dataset import build_datasets, read_folds, split_ids, worker_init
from carvana_seg.training import state_log
from carvana_seg.training import optim as optimmod
from carvana_seg.training.losses import BceDiceLoss
from carvana_seg.training.tensorboard_log import Board

log = logging.getLogger(__name__)

# data_share: the fraction of the training epoch spent blocked on the DataLoader (0 = the model never waits).
METRIC_COLUMNS = ["epoch", "train_loss", "val_loss", "val_dice", "lr", "seconds", "images_per_s", "data_share"]
STATE_FILE = "last.pt"
STATE_FORMAT = 2  # 2: loadable with weights_only=True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", required=True, help="variant name (selects the variants entry)")
    parser.add_argument("--fold", type=int, required=True, help="validation fold; training uses the other cars")
    parser.add_argument("--folds", required=True, help="folds.csv")
    parser.add_argument("--cache", required=True, help="resize cache directory at the variant's resolution")
    parser.add_argument("--out-model", required=True, help="best.pt to write when training ends")
    parser.add_argument("--out-metrics", required=True, help="metrics.csv to write when training ends")
    parser.add_argument("--state-dir", required=True, help="resume state directory (kept across failed runs)")
    parser.add_argument("--threads", type=int, default=2,
                        help="the job's CPU threads: torch gets what the DataLoader workers (train.num_workers) leave")
    parser.add_argument("--extra-layout", action="append", default=[], metavar="DIR",
                        help="Kaggle training layout whose images are all added to the training set, never to "
                             "validation, decoded by the DataLoader (pseudo-labelled test images); repeatable")
    parser.add_argument("--init-from", default=None, metavar="BEST_PT",
                        help="start from this checkpoint's weights (same variant) instead of random init")
    parser.add_argument("--tensorboard", default=None, metavar="DIR",
                        help="TensorBoard run directory for live curves (tensorboard_log); none when omitted")
    # Testing aid: stop (as if killed) after N epochs of this invocation, outputs unwritten.
    parser.add_argument("--max-epochs-this-run", type=int, default=None, help=argparse.SUPPRESS)


def _identity(cfg: dict, fold: int, train_ids: list[str], val_ids: list[str], extra: dict | None = None) -> dict:
    """What a saved state must match to be resumed: the config (minus the ensemble weight) and the fold split;
    with ``extra`` (extra layouts' ids and mask digests, init weights' digest) those too."""
    c = copy.deepcopy(cfg)
    c.get("variant", {}).pop("weight", None)  # ensemble weight does not change training
    for key in ("compile", "tensorboard_images"):  # nor how it runs or what it shows: a saved state still resumes
        c.get("train", {}).pop(key, None)
    digest = hashlib.sha256("\n".join(train_ids + ["|"] + val_ids).encode()).hexdigest()[:16]
    out = {"cfg": c, "fold": fold, "split": digest}
    if extra:
        out["extra"] = extra
    return out


def _file_digest(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
    return h.hexdigest()[:16]


def _extra_identity(extra_layouts: list[str], init_from: str | None) -> dict:
    """Extra layouts (ids, and the digest of their train_masks.csv: every mask as RLE) and the init checkpoint's."""
    out: dict = {}
    if extra_layouts:
        out["layouts"] = [{"ids": hashlib.sha256("\n".join(layout.list_ids(Path(d) / layout.TRAIN_DIR)).encode())
                           .hexdigest()[:16], "masks": _file_digest(Path(d) / layout.TRAIN_MASKS_CSV)}
                          for d in extra_layouts]
    if init_from:
        out["init"] = _file_digest(init_from)
    return out


def _input_identity(cache_dir: str | os.PathLike) -> dict:
    """The main cache's files (size, mtime: a rebuilt cache restarts training) and the training code's fingerprint
    (``codedeps``, the ``code`` param of the rule), so a rerun that Snakemake triggers by a code or input change
    retrains instead of returning a stale state; comments and docstrings do not count."""
    from carvana_seg.pipeline import codedeps

    files = {n: [(st := (Path(cache_dir) / n).stat()).st_size, st.st_mtime_ns] for n in ("images.npy", "masks.npy")}
    return {"cache": files, "code": codedeps.stage_fingerprint("train")}


def _init_weights(model: torch.nn.Module, path: str, variant: dict) -> None:
    """Load a ``best.pt`` of the same variant into ``model`` (architecture and size must match)."""
    ckpt = modelmod.load_checkpoint(path)
    v = ckpt.get("config", {}).get("variant", {})
    same = all(v.get(k) == variant.get(k) for k in ("name", "arch", "encoder", "width", "height"))
    if not same:
        raise DataError(f"{path}: checkpoint of variant {v.get('name')} ({v.get('width')}x{v.get('height')}), "
                        f"cannot initialise {variant['name']} ({variant['width']}x{variant['height']})")
    model.load_state_dict(modelmod.with_order(ckpt["state_dict"]))
    log.info("initialised from %s (epoch %s, val Dice %s)", path, ckpt.get("epoch"), ckpt.get("val_dice"))


def _diff(a: object, b: object, prefix: str = "") -> list[str]:
    """Dotted keys where two nested dicts differ (for the 'starting from zero because ...' message)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".") or "<value>"]


def subsample(ids: list[str], limit: int | None) -> list[str]:
    """At most ``limit`` of the sorted ``ids``, evenly spaced (so every car and view keeps its share); all if None.

    The per-epoch validation only picks the best epoch and drives early stopping; on a 2-core CPU a full fold costs
    a third of an epoch's training, and the ``oof`` stage scores every image of the fold anyway."""
    if not limit or len(ids) <= limit:
        return ids
    picks = np.unique(np.linspace(0, len(ids) - 1, int(limit)).round().astype(int))
    return [ids[i] for i in picks]


def _rng_state() -> dict:
    """Every RNG's state as tensors and plain data (numpy's key array as a tensor), loadable with weights_only."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = (name, torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(gauss))
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_atomic(obj: dict, path: Path) -> None:
    """Write the resume state durably through ``staging``: a full disk is one WriteError naming ``path``, and
    leaves no temporary (torch writing to a file would raise its own RuntimeError mid-file instead)."""
    staging.write_bytes(path, modelmod.to_bytes(obj), durable=True)


def _load_state(state_dir: Path, identity: dict) -> dict | None:
    """The saved state if it belongs to this config and split, else None (with the reason logged)."""
    path = state_dir / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # plain data only, see _rng_state
    except Exception as exc:  # a state we cannot read is no reason to fail: retrain
        log.warning("ignoring unreadable state %s (%s); starting from epoch 1", path, exc)
        return None
    if state.get("format") != STATE_FORMAT or state.get("identity") != identity:
        old = state.get("identity", {})
        why = [f"cfg.{k}" for k in _diff(old.get("cfg"), identity["cfg"])]
        why += [k for k in ("fold", "split", "extra", "cache", "code") if old.get(k) != identity.get(k)]
        why += ["state format"] if state.get("format") != STATE_FORMAT else []
        log.info("state in %s is from a different setup (changed: %s); starting from epoch 1", path, ", ".join(why))
        return None
    return state


def _evaluate(model, loader, criterion, device, use_amp: bool, channels_last: bool) -> tuple[float, float]:
    """(mean loss, mean per-image Dice at p >= 0.5 vs coverage >= 128/255, both-empty = 1) on the val set."""
    model.eval()
    loss_sum, n, counts = 0.0, 0, []
    with torch.inference_mode():
        for x, y in loader:
            x, y = _to_device(x, y, device, channels_last)
            with autocast(device, use_amp):
                logits = model(x)
            loss_sum += float(criterion(logits.float(), y)) * x.shape[0]
            n += x.shape[0]
            pred = logits[:, 0] >= 0
            truth = (y[:, 0] * 255.0).round() >= 128
            counts.append(torch.stack([(pred & truth).sum((1, 2)), pred.sum((1, 2)), truth.sum((1, 2))], 1).cpu())
    c = torch.cat(counts).numpy()
    return loss_sum / n, float(dice_from_counts(c[:, 0], c[:, 1], c[:, 2]).mean())


def train_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, criterion, opt: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, device: torch.device, use_amp: bool, channels_last: bool) -> float | None:
    """One optimisation step on a batch; the loss, or None (and no step) when it is not finite.

    Shared with benchmarks/train_speed.py so that the benchmark times exactly what training runs. Reading the loss
    back synchronises with the GPU, so the time until the next batch arrives is the data loader's alone."""
    x, y = _to_device(x, y, device, channels_last)
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


def _to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool):
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


def run(args: argparse.Namespace, cfg: dict) -> None:
    # One long function on purpose: setup, resume and the epoch loop share a dozen objects (model, optimizer,
    # scheduler, scaler, loaders, generator, state); split up, every part would take and return them all.
    tc, variant = cfg["train"], cfg["variant"]
    encoder_weights.ensure_available(variant)  # before any data is read: one error naming the missing file
    device = pick_device(tc.get("device", "auto"))
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(torch_threads(args.threads, tc.get("num_workers", 0)))
    channels_last = cuda and tc.get("channels_last", True)
    use_amp = cuda and tc.get("amp", True)
    fp16 = use_amp and not torch.cuda.is_bf16_supported()

    train_ids, val_ids = split_ids(read_folds(args.folds), args.fold)
    if not train_ids or not val_ids:
        raise DataError(f"fold {args.fold}: {len(train_ids)} training and {len(val_ids)} validation images")
    val_ids = subsample(val_ids, tc.get("val_max_images"))
    seed = int(cfg.get("seed", 0)) * 1000 + args.fold
    train_ds, val_ds = build_datasets(args.cache, train_ids, val_ids, build_augment(tc.get("augment", {}), seed),
                                      args.extra_layout)
    if train_ds.size != (variant["width"], variant["height"]):
        raise DataError(f"{args.cache}: cache is {train_ds.size}, variant '{args.variant}' needs "
                        f"{variant['width']}x{variant['height']}")
    bs, workers = variant["batch_size"], tc.get("num_workers", 0)
    gen = torch.Generator()
    train_dl = DataLoader(train_ds, bs, shuffle=True, num_workers=workers, generator=gen, worker_init_fn=worker_init,
                          drop_last=len(train_ds) > bs, pin_memory=cuda)
    val_dl = DataLoader(val_ds, bs, shuffle=False, num_workers=workers, pin_memory=cuda)

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model = modelmod.build_model(variant).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    fwd = maybe_compile(model, tc.get("compile", False))  # shares model's parameters; state dicts come from model
    criterion = BceDiceLoss.from_config(tc.get("loss", {}))
    opt, sched = optimmod.from_config(model, variant, tc, len(train_dl))
    scaler = torch.amp.GradScaler("cuda", enabled=fp16)
    epochs, patience = variant["epochs"], tc.get("early_stopping_patience", 10)
    max_bad_steps = tc.get("max_nonfinite_steps", 20)

    state_dir = Path(args.state_dir)
    staging.sweep(state_dir / STATE_FILE, args.out_model, args.out_metrics)  # temporaries of a killed run
    identity = _identity(cfg, args.fold, train_ids, val_ids, _extra_identity(args.extra_layout, args.init_from))
    identity.update(_input_identity(args.cache))
    s = _load_state(state_dir, identity)
    handler = state_log.attach(state_dir, resumed=s is not None)  # keeps the earlier epochs' lines
    try:
        if s is not None:
            model.load_state_dict(s["model"])
            opt.load_state_dict(s["optimizer"])
            sched.load_state_dict(s["scheduler"])
            scaler.load_state_dict(s["scaler"])
            _set_rng_state(s["rng"])
            if s["epoch"] >= variant["epochs"] or s["bad_epochs"] >= tc.get("early_stopping_patience", 10):
                log.info("state %s holds a finished run (%d epochs); writing its outputs", state_dir / STATE_FILE,
                         s["epoch"])
            else:
                log.info("resuming from epoch %d (state %s, best val Dice %.5f at epoch %d)",
                         s["epoch"] + 1, state_dir / STATE_FILE, s["best_dice"], s["best_epoch"])
        else:
            if args.init_from:
                _init_weights(model, args.init_from, variant)
            s = {"epoch": 0, "best_dice": -1.0, "best_epoch": 0, "best_model": None, "bad_epochs": 0, "rows": [],
                 "nonfinite_total": 0}
        log.info("variant %s fold %d: %d train (%d from extra layouts) / %d val images at %dx%d on %s (amp=%s), "
                 "%d epochs", args.variant, args.fold, len(train_ds), len(train_ds) - len(train_ids), len(val_ds),
                 *train_ds.size, device, ("fp16" if fp16 else "bf16") if use_amp else "off", epochs)

        live = s["epoch"] < epochs and s["bad_epochs"] < patience
        board = Board(args.tensorboard if live else None, s["epoch"] + 1, tc.get("tensorboard_images", 4))
        run_epochs = 0
        while s["epoch"] < epochs and s["bad_epochs"] < patience:
            epoch = s["epoch"] + 1
            t0 = time.perf_counter()
            gen.manual_seed(seed * 100_003 + epoch)  # shuffling and worker seeds of this epoch
            train_ds.reseed(seed * 100_019 + epoch)  # augmentation when num_workers == 0
            lr = opt.param_groups[0]["lr"]
            model.train()
            loss_sum, n_seen, consecutive, data_seconds = 0.0, 0, 0, 0.0
            bar = tqdm(train_dl, desc=f"epoch {epoch}/{epochs}", mininterval=5.0, leave=False)
            t_ready = time.perf_counter()
            for x, y in bar:
                data_seconds += time.perf_counter() - t_ready  # blocked on the loader (the loss sync ends each step)
                loss = train_step(fwd, x, y, criterion, opt, scaler, device, use_amp, channels_last)
                if loss is None:
                    consecutive += 1
                    s["nonfinite_total"] += 1
                    log.warning("epoch %d: non-finite loss, step skipped (%d in a row)", epoch, consecutive)
                    if consecutive >= max_bad_steps:
                        raise CarvanaSegError(
                            f"{consecutive} consecutive non-finite losses (train.max_nonfinite_steps={max_bad_steps}) "
                            f"in epoch {epoch}: lower variants.{args.variant}.lr or set train.amp: false")
                    t_ready = time.perf_counter()
                    continue
                consecutive = 0
                sched.after_step()
                loss_sum += loss * x.shape[0]
                n_seen += x.shape[0]
                bar.set_postfix(loss=f"{loss_sum / n_seen:.4f}", refresh=False)
                t_ready = time.perf_counter()
            bar.close()
            train_seconds = time.perf_counter() - t0
            val_loss, val_dice = _evaluate(fwd, val_dl, criterion, device, use_amp, channels_last)
            sched.after_epoch(val_dice)
            if val_dice > s["best_dice"]:
                s.update(best_dice=val_dice, best_epoch=epoch, bad_epochs=0,
                         best_model={k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
            else:
                s["bad_epochs"] += 1
            seconds = time.perf_counter() - t0
            row = {"epoch": epoch, "train_loss": loss_sum / max(n_seen, 1), "val_loss": val_loss, "val_dice": val_dice,
                   "lr": lr, "seconds": round(seconds, 3), "images_per_s": round(n_seen / max(train_seconds, 1e-9), 2),
                   "data_share": round(data_seconds / max(train_seconds, 1e-9), 4)}
            s["rows"].append(row)
            s["epoch"] = epoch
            board.epoch(epoch, row, model, val_ds, device)
            _save_atomic({**s, "format": STATE_FORMAT, "identity": identity, "cfg": cfg,
                          "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                          "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                          "rng": _rng_state()}, state_dir / STATE_FILE)
            log.info("epoch %d/%d: train loss %.4f, val loss %.4f, val Dice %.5f, lr %.2e, %.1f s, %.1f img/s, "
                     "%.1f%% waiting for data", epoch, epochs, row["train_loss"], val_loss, val_dice, lr, seconds,
                     row["images_per_s"], 100 * row["data_share"])
            if s["bad_epochs"] >= patience:
                log.info("early stopping: no val Dice improvement for %d epochs", patience)
            run_epochs += 1
            done = s["epoch"] >= epochs or s["bad_epochs"] >= patience
            if args.max_epochs_this_run is not None and run_epochs >= args.max_epochs_this_run and not done:
                raise CarvanaSegError(f"stopped after {run_epochs} epoch(s) this run (--max-epochs-this-run); "
                                      f"state kept in {state_dir}, rerun to resume")
        board.close()
        _write_outputs(args, cfg, model, s)
    finally:
        state_log.detach(handler)


def _write_outputs(args: argparse.Namespace, cfg: dict, model: torch.nn.Module, s: dict) -> None:
    """Write metrics.csv and best.pt (the best epoch's weights), each atomically, after training has finished."""
    staging.write_text(Path(args.out_metrics), pd.DataFrame(s["rows"], columns=METRIC_COLUMNS).to_csv(index=False))
    model.load_state_dict(s["best_model"])
    modelmod.save_checkpoint(args.out_model, model, cfg, epoch=s["best_epoch"], val_dice=s["best_dice"],
                             fold=args.fold, nonfinite_steps=s["nonfinite_total"])
    log.info("best val Dice %.5f at epoch %d -> %s", s["best_dice"], s["best_epoch"], args.out_model)
