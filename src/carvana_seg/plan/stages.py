"""The per-stage arithmetic of a plan: jobs, images, disk written, model FLOPs and projected hours.

Job counts follow the DAG's own rules (``rounds``, ``config.fold_ids``), so they equal the ``snakemake -n`` job
table (a test checks it). Images count every image a stage's jobs process, epochs and TTA included. Hours are
device-hours (one GPU per model job): the larger of the model's time (FLOPs / the device's FLOP/s) and the time
the job's loader workers need to feed it (``throughput``); CPU stages are left at 0 (minutes, not hours, on the
competition data). Disk: what each stage leaves under ``data/`` and ``results/``; the pipeline deletes nothing,
so the peak is the sum, except the Kaggle zips, which are deleted once extracted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from carvana_seg.pipeline import rounds
from carvana_seg.pipeline.config import fold_ids
from carvana_seg.plan import throughput as tp
from carvana_seg.plan.data import DataSize, fold_sizes, n_pseudo
from carvana_seg.plan.model_cost import BYTES_PER_PARAM, model_cost

PHOTO_MPX = 1918 * 1280 / 1e6
# Bytes per 1918x1280 photo (scaled by pixels for other sizes), measured on the real sample:
PROB_BYTES = 33_400  # one uint8 probability map in npz, deflate level 3 (docs/benchmarks.md, `--real` row)
VARIANT_MASK_BYTES = 820  # one variant's 1/4-scale bit-packed mask, deflated (variant_masks)
SHEET_BYTES = 600_000  # one outlier contact sheet (PNG, 4 x 4 views at tile_width 240)
GZIP_RATIO = 0.43  # submission.csv.gz / its RLE text
ZOOM_SHARE = 0.01  # assumed share of test images the outlier check re-predicts (repredict: zoom)


@dataclass
class Stage:
    rule: str
    jobs: int = 0
    images: float = 0.0
    disk: float = 0.0  # bytes written
    flops: float = 0.0
    hours: float = 0.0
    gpu: bool = False
    notes: list[str] = field(default_factory=list)


def _variants(config: dict) -> dict[str, dict]:
    return {v["name"]: v for v in config["variants"]}


def _mpx(v: dict) -> float:
    return v["width"] * v["height"] / 1e6


def _hours(*seconds: float) -> float:
    return max(seconds) / 3600


def train_stages(config: dict, data: DataSize, dev: tp.Device) -> tuple[Stage, Stage]:
    """(train, oof) over every round: round r >= 2 adds the pseudo-labels, decoded per sample from their JPEGs."""
    train, oof = Stage("train", gpu=True), Stage("oof", gpu=True)
    folds, variants = fold_ids(config), _variants(config)
    n_tr, n_val = fold_sizes(data.n_train, config["folds"]["k"])
    workers = config["train"]["num_workers"]
    photo_mpx = data.width * data.height / 1e6
    pseudo = n_pseudo(config, data.n_test)
    for r in range(1, rounds.last_round(config) + 1):
        for name in rounds.round_variants(config, r):
            v, cost = variants[name], model_cost(variants[name])
            epochs = rounds.train_slice(config, name, r)["variant"]["epochs"]
            extra = pseudo if r > 1 else 0
            per_epoch = n_tr + extra
            flops = len(folds) * epochs * (per_epoch * cost.train + n_val * cost.forward)
            load_ms = (n_tr + n_val) * tp.cache_sample_ms(_mpx(v)) + extra * tp.layout_sample_ms(_mpx(v), photo_mpx)
            load_s = len(folds) * epochs * load_ms / 1000
            model_s = flops / dev.train_flops
            train.jobs += len(folds)
            train.images += len(folds) * epochs * per_epoch
            train.flops += flops
            train.hours += _hours(model_s, load_s / workers) if workers else (model_s + load_s) / 3600
            ckpt = cost.params * BYTES_PER_PARAM
            train.disk += len(folds) * 4 * ckpt  # best.pt + resume state (weights, best weights, RMSprop state)
            if workers and load_s / workers > model_s:
                train.notes.append(
                    f"round {r} {name}: loader-bound ({workers} workers feed "
                    f"{per_epoch * epochs * len(folds) / load_s * workers:.0f} img/s, the model "
                    f"takes {per_epoch * epochs * len(folds) / model_s:.0f})"
                )
            oof.jobs += len(folds)
            oof.images += len(folds) * n_val * 2
            oof.flops += len(folds) * n_val * 2 * cost.forward
            oof.hours += len(folds) * n_val * 2 * cost.forward / dev.infer_flops / 3600
            oof.disk += len(folds) * n_val * PROB_BYTES * photo_mpx / PHOTO_MPX
    return train, oof


def predict_stages(config: dict, data: DataSize, dev: tp.Device) -> list[Stage]:
    """ensemble, outliers (zoom re-prediction), threshold, oof_table, submission, score: once per round."""
    last, variants = rounds.last_round(config), _variants(config)
    folds, photo_mpx = fold_ids(config), data.width * data.height / 1e6
    per_image = 2 * len(folds) * sum(model_cost(v).forward for v in variants.values())  # flip-TTA, every model
    sizes = {(v["width"], v["height"]) for v in variants.values()}
    decode_s = data.n_test * tp.decode_ms(photo_mpx, len(sizes)) / 1000 / max(1, config["predict"]["workers"])
    ens = Stage("ensemble", last, last * data.n_test, gpu=True)
    ens.flops = last * data.n_test * per_image
    ens.hours = last * _hours(data.n_test * per_image / dev.infer_flops, decode_s)
    ens.disk = last * data.n_test * (PROB_BYTES + VARIANT_MASK_BYTES * len(variants)) * photo_mpx / PHOTO_MPX
    oc = config["outliers"]
    zoom = oc["action"] == "fix" and oc["repredict"] == "zoom"
    out = Stage("outliers", last, last * data.n_test, gpu=zoom)
    out.disk = last * min(oc["sheets_max"], data.n_test // 16) * SHEET_BYTES
    if zoom:
        out.flops = last * ZOOM_SHARE * data.n_test * per_image
        out.hours = out.flops / dev.infer_flops / 3600
        out.notes.append(f"zoom re-prediction assumed for {ZOOM_SHARE:.0%} of the test images")
    sub = Stage("submission", last, last * data.n_test, last * data.n_test * data.rle_row * GZIP_RATIO)
    stages = [Stage("oof_table", last), Stage("threshold", last, last * data.n_train * len(variants)), ens, out, sub]
    if config["data"]["source"] == "synthetic":
        stages.append(Stage("score", last, last * data.n_test))
    return stages


def data_stages(config: dict, data: DataSize) -> list[Stage]:
    """fetch, validate_data, folds, resize_cache (one job per distinct variant size)."""
    sizes = sorted({(v["width"], v["height"]) for v in config["variants"]})
    resize = Stage("resize_cache", len(sizes), len(sizes) * data.n_train)
    resize.disk = sum(data.n_train * w * h * 4 for w, h in sizes)  # uint8 RGB + coverage mask, uncompressed
    fetch = Stage("fetch", 1, data.n_train + data.n_test, 0.0 if data.linked else data.raw_bytes)
    if data.linked:
        fetch.notes.append("local directories are linked into raw/, not copied")
    if data.archive_bytes:
        fetch.notes.append(f"zips: {data.archive_bytes / 1e9:.1f} GB while downloading, deleted once extracted")
    return [fetch, Stage("validate_data", 1, data.n_train + data.n_test), Stage("folds", 1, data.n_train), resize]


def pseudo_stages(config: dict, data: DataSize) -> list[Stage]:
    """pseudo_labels per later round (masks and RLE; the photos are links) and pseudo_gain."""
    later = rounds.last_round(config) - 1
    if later < 1:
        return []
    n = n_pseudo(config, data.n_test)
    labels = Stage("pseudo_labels", later, later * data.n_test, later * n * (data.mask_gif + data.rle_row))
    labels.notes.append(f"{n} test images per round, linked (a copy only where symlinks fail)")
    return [labels, Stage("pseudo_gain", 1)]


def plan_stages(config: dict, data: DataSize, dev: tp.Device) -> list[Stage]:
    """Every stage of the DAG in run order, ``all`` last (as in the job table)."""
    train, oof = train_stages(config, data, dev)
    predict = predict_stages(config, data, dev)
    return [
        *data_stages(config, data),
        train,
        oof,
        *predict,
        *pseudo_stages(config, data),
        Stage("report_figures", 1),
        Stage("all", 1),
    ]


def peak_disk(stages: list[Stage], data: DataSize) -> float:
    """Peak bytes under data/ and results/: everything written, the zips only while they are extracted."""
    written = sum(s.disk for s in stages)
    raw = sum(s.disk for s in stages if s.rule == "fetch")
    return written + max(0.0, data.archive_bytes - (written - raw))
