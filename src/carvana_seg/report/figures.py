"""The ``report-figures`` stage: the PNGs and tables of the HTML report (``make report``,
``workflow/rules/report.smk``).

Reads what the pipeline wrote under ``results/<name>/`` and writes into ``--out-dir`` (``results/<name>/report``):

- ``training_<variant>_fold<k>.png``: losses, val Dice and learning rate per epoch (``metrics.csv`` of ``train``)
- ``oof_dice.png``: per-image OOF Dice of every variant side by side, and per fold (``oof_dice.csv``)
- ``threshold.png``: mean OOF Dice against the threshold, the chosen one marked (``threshold_curve.csv``/``.json``)
- ``pseudo_labels.png``: pseudo-labelling rounds, or a note that there were none (``report_tables.pseudo_rounds``)
- ``outliers.html``, ``outlier_gallery.html``: the flagged images, and the outlier stage's contact sheets
- ``throughput.png``, ``stage_times.html``, ``stage_times.csv``: time per stage (benchmark TSVs) and test images/s
- ``cars.html``, ``cars.csv``: worst cars first, per-view failures and the worst cars' outline sheets
  (``report.cars``; with ``--oof-images``)
- ``landing.rst``: the run's headline numbers, which the report opens on (``report.landing``)
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd

from carvana_seg.inference.threshold_file import read_threshold
from carvana_seg.pipeline.errors import DataError
from carvana_seg.report import landing
from carvana_seg.report.tables import dice_by_round, html_page, pseudo_rounds, round_dirs, stage_times

log = logging.getLogger(__name__)
GALLERY_MAX = 50  # contact sheets embedded in outlier_gallery.html (about 0.1 MB each as JPEG)
METRICS_RE = re.compile(r"(?:/round(?P<round>\d+))?/models/(?P<variant>[^/]+)/fold(?P<fold>\d+)/metrics\.csv$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics", nargs="+", required=True, help=".../models/<variant>/fold<k>/metrics.csv files")
    parser.add_argument("--oof-dice", required=True, help="oof_dice.csv (img, car, fold, variant, dice)")
    parser.add_argument("--threshold", required=True, help="threshold.json")
    parser.add_argument("--curve", required=True, help="threshold_curve.csv (threshold, mean_dice)")
    parser.add_argument("--outliers", required=True, help="outliers.csv (one row per flagged image)")
    parser.add_argument("--sheets", required=True, help="contact_sheets.json; its PNGs lie beside it")
    parser.add_argument("--test-probs", required=True, help="test_probs.json of the ensemble (throughput)")
    parser.add_argument(
        "--results",
        required=True,
        help="results/<name>: its benchmarks/ (and round<r>/benchmarks/) and pseudo-label files",
    )
    parser.add_argument(
        "--inputs",
        nargs="*",
        default=None,
        help="the files under --results to read (benchmark TSVs, pseudo_labels.csv, pseudo_gain.json: "
        "the rule's declared inputs); nothing else there is read. Default: look in --results",
    )
    parser.add_argument("--out-dir", required=True, help="where the figures and tables go")
    parser.add_argument(
        "--plan-config",
        default=None,
        help="the run's resolved config as JSON: adds planned next to measured (carvana_seg.plan)",
    )
    parser.add_argument("--oof-images", default=None, help="oof_image_dice.csv of the threshold stage (cars.html)")
    parser.add_argument("--folds", default=None, help="folds.csv (cars.html)")
    parser.add_argument("--oof-npz", nargs="*", default=[], help="the final round's OOF npz files (cars.html)")
    parser.add_argument("--oof-weights", nargs="*", type=float, default=[], help="ensemble weight of each --oof-npz")
    parser.add_argument("--raw", default=None, help="raw Kaggle layout (photos and masks of the sheets)")
    parser.add_argument("--test-score", default=None, help="test_score.json with per_car Dice, where known")
    parser.add_argument("--worst-cars", type=int, default=6, help="contact sheets of this many worst cars")


def _plt():
    """pyplot with the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    _plt().close(fig)


def _note(path: Path, title: str, text: str) -> None:
    """A figure that only says why there is nothing to plot."""
    fig, ax = _plt().subplots(figsize=(7, 2.2))
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.45, text, ha="center", va="center", wrap=True, fontsize=11)
    _save(fig, path)


def curve_name(metrics_csv: str | Path) -> tuple[str, str]:
    """Figure file name and title of a metrics.csv: ``training_<v>_fold<k>[_round<r>].png``, ``<v> fold <k>``."""
    m = METRICS_RE.search("/" + Path(metrics_csv).as_posix())
    if m is None:
        raise DataError(f"{metrics_csv}: expected .../[round<r>/]models/<variant>/fold<k>/metrics.csv")
    rnd = f"_round{m['round']}" if m["round"] else ""
    title = f"{m['variant']} fold {m['fold']}" + (f" (round {m['round']})" if rnd else "")
    return f"training_{m['variant']}_fold{m['fold']}{rnd}.png", title


def training_curve(metrics_csv: Path, title: str, out: Path) -> None:
    """Train/val loss, val Dice and learning rate per epoch of one variant x fold."""
    df = pd.read_csv(metrics_csv)
    if df.empty:
        return _note(out, title, "metrics.csv has no epochs")
    from matplotlib.ticker import MaxNLocator

    fig, (ax1, ax2) = _plt().subplots(1, 2, figsize=(10, 3.4))
    ax1.plot(df["epoch"], df["train_loss"], "o-", label="train loss")
    ax1.plot(df["epoch"], df["val_loss"], "s-", label="val loss")
    ax1.set_xlabel("epoch"), ax1.set_ylabel("loss"), ax1.legend()
    best = df.loc[df["val_dice"].idxmax()]
    ax2.plot(df["epoch"], df["val_dice"], "o-", color="tab:green", label="val Dice")
    ax2.axvline(best["epoch"], color="grey", ls=":", lw=1)
    ax2.set_xlabel("epoch"), ax2.set_ylabel("val Dice")
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    lr_ax = ax2.twinx()
    lr_ax.plot(df["epoch"], df["lr"], "--", color="tab:purple", label="lr")
    lr_ax.set_yscale("log"), lr_ax.set_ylabel("learning rate")
    fig.suptitle(
        f"{title}: best val Dice {best['val_dice']:.4f} at epoch {int(best['epoch'])}, "
        f"{df['images_per_s'].mean():.1f} train images/s{_data_wait(df)}, {df['seconds'].sum():.0f} s"
    )
    _save(fig, out)


def _data_wait(df: pd.DataFrame) -> str:
    """' (x% waiting for data)' from metrics.csv's data_share; empty for runs written before the column existed."""
    if "data_share" not in df or df["data_share"].isna().all():
        return ""
    return f" ({100 * df['data_share'].mean():.0f}% waiting for data)"


def oof_dice(table_csv: Path, out: Path) -> pd.DataFrame:
    """Box plot of per-image OOF Dice per variant and per-fold means; returns the means (variant x fold)."""
    df = pd.read_csv(table_csv, dtype={"img": str, "car": str, "variant": str})
    if df.empty:
        raise DataError(f"{table_csv}: no OOF Dice rows")
    variants = sorted(df["variant"].unique())
    means = df.pivot_table(index="variant", columns="fold", values="dice", aggfunc="mean").loc[variants]
    fig, (ax1, ax2) = _plt().subplots(1, 2, figsize=(11, 3.8))
    ax1.boxplot([df.loc[df["variant"] == v, "dice"] for v in variants], showmeans=True)
    ax1.set_xticks(
        range(1, len(variants) + 1), [f"{v}\nmean {df.loc[df['variant'] == v, 'dice'].mean():.4f}" for v in variants]
    )
    ax1.set_ylabel("OOF Dice per image"), ax1.set_title("per image (triangle: mean)")
    width = 0.8 / len(variants)
    for i, v in enumerate(variants):
        ax2.bar([k + i * width for k in range(means.shape[1])], means.loc[v], width, label=v)
    ax2.set_xticks([k + 0.4 - width / 2 for k in range(means.shape[1])], [f"fold {f}" for f in means.columns])
    low = float(means.min().min())
    ax2.set_ylim(max(0.0, low - 0.05 * max(1e-3, 1 - low) - 0.01), 1.0)
    ax2.set_ylabel("mean OOF Dice"), ax2.set_title("per fold"), ax2.legend(fontsize=8)
    _save(fig, out)
    return means


def threshold_curve(curve_csv: Path, threshold_json: Path, out: Path) -> None:
    """Mean OOF Dice against the threshold with the chosen threshold marked."""
    curve = pd.read_csv(curve_csv)
    chosen = read_threshold(threshold_json)
    fig, (ax1, ax2) = _plt().subplots(1, 2, figsize=(10, 3.4))
    t = float(chosen["threshold"])
    for ax in (ax1, ax2):
        ax.plot(curve["threshold"], curve["mean_dice"], "-", color="tab:blue")
        ax.axvline(t, color="tab:red", ls="--", lw=1)
        ax.set_xlabel("threshold"), ax.set_ylabel("mean OOF Dice")
    ax1.set_title(f"threshold {t:.4f} ({chosen.get('source', '?')}), mean Dice {chosen.get('mean_dice', math.nan):.5f}")
    near = curve[(curve["threshold"] - t).abs() <= 0.1]
    ax2.set_xlim(max(0.0, t - 0.1), min(1.0, t + 0.1))
    if not near.empty:
        span = float(near["mean_dice"].max() - near["mean_dice"].min())
        ax2.set_ylim(
            float(near["mean_dice"].min()) - 0.05 * span - 1e-6, float(near["mean_dice"].max()) + 0.05 * span + 1e-6
        )
    ax2.set_title("zoom: threshold +- 0.1")
    _save(fig, out)


def pseudo_labels(results: Path, out: Path, files: list[str] | None = None) -> None:
    """Per round: pseudo-label confidence and Dice; a note when the run had no pseudo-labelling. ``files``: the
    files under ``results`` that may be read (``report_tables``)."""
    rounds, dice = pseudo_rounds(results, files), dice_by_round(results, files)
    if not rounds and dice.empty:
        return _note(
            out, "Pseudo-labels", "No pseudo-labelling in this run (no pseudo_labels.csv, no pseudo_gain.json)."
        )
    fig, (ax1, ax2) = _plt().subplots(1, 2, figsize=(10, 3.4))
    shown = [r for r in rounds if r["confidence"] is not None and len(r["confidence"])]
    for r in shown:
        ax1.hist(
            r["confidence"],
            bins=30,
            histtype="step",
            label=f"round {r['round']}: {r['n_selected']} of {r['n_images']} selected",
        )
    ax1.set_xlabel("confidence"), ax1.set_ylabel("test images"), ax1.set_title("pseudo-label confidence")
    if shown:
        ax1.legend(fontsize=8)
    for col in dice.columns:
        ax2.plot(dice.index, dice[col], "o-", label=col)
    ax2.set_xlabel("round"), ax2.set_ylabel("Dice")
    ax2.set_title("Dice per round" if not dice.empty else "no pseudo_gain.json")
    if not dice.empty:
        ax2.set_xticks(list(dice.index)), ax2.legend(fontsize=8)
    _save(fig, out)


def _jpeg_data_uri(png: Path, quality: int = 85) -> str:
    """A contact sheet re-encoded as a JPEG data URI (a fifth of the PNG's size, for the self-contained page)."""
    from PIL import Image

    buf = io.BytesIO()
    with Image.open(png) as img:
        img.convert("RGB").save(buf, "JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def outlier_gallery(outliers_csv: Path, sheets_json: Path, out_table: Path, out_gallery: Path) -> int:
    """The flagged images as an HTML table, and a self-contained HTML page of the contact sheets (at most
    ``GALLERY_MAX``, worst car first); returns the number of sheets shown."""
    table = pd.read_csv(outliers_csv, keep_default_na=False)
    record = json.loads(Path(sheets_json).read_text())
    sheets = record.get("sheets", [])
    head = (
        f"{record.get('n_flagged_images', len(table))} of {record.get('n_images', '?')} test images flagged in "
        f"{record.get('n_flagged_cars', '?')} cars, action <b>{html.escape(str(record.get('action', '?')))}</b>, "
        f"{record.get('n_fixed_images', '?')} masks changed, {len(sheets)} contact sheets"
    )
    body = table.to_html(index=False, border=0) if len(table) else "<p>No test image was flagged.</p>"
    out_table.write_text(html_page("Outliers", f"<p>{head}</p>{body}"))
    figures = []
    for s in sheets[:GALLERY_MAX]:
        src = Path(sheets_json).parent / s["file"]
        if not src.is_file():
            raise DataError(f"{src}: contact sheet listed in {sheets_json} not found")
        figures.append(
            f"<figure id='car-{html.escape(s['car'])}'><img alt='{html.escape(s['car'])}' "
            f"src='{_jpeg_data_uri(src)}' style='max-width:100%'><figcaption>"
            f"{html.escape(s.get('title', s['car']))}</figcaption></figure>"
        )
    more = len(sheets) - len(figures)
    note = f"<p>{more} more contact sheets in {html.escape(str(Path(sheets_json).parent))}/</p>" if more > 0 else ""
    body = "\n".join(figures) if figures else "<p>No test car was flagged: no contact sheets.</p>"
    out_gallery.write_text(html_page("Outlier gallery", f"<p>{head}</p>{body}{note}"))
    return len(figures)


def planned(config: dict | None, device: str, measured: list[pd.DataFrame]) -> str:
    """HTML of the plan (``carvana_seg.plan``) for the run's device next to the measured jobs and hours."""
    if config is None:
        return ""
    from carvana_seg.plan.command import make_plan
    from carvana_seg.plan.compare import compare, device_row

    plan = make_plan(config, device_row(device))
    return (
        f"<h2>Planned ({plan['device']['name']}: {html.escape(plan['device']['source'])}) next to measured</h2>"
        f"<p>planned peak disk {plan['peak_disk'] / 1e9:.2f} GB; planned hours are device-hours of the model "
        "stages</p>" + compare(plan, measured).to_html(index=False, border=0, na_rep="-")
    )


def measured_times(
    bench_dir: Path, files: list[str] | None = None
) -> tuple[pd.DataFrame, list[tuple[int, pd.DataFrame]]]:
    """Time per stage of round one's jobs (``results/<name>/benchmarks``, this report's own job left out) and of
    each later round's (``round<r>/benchmarks``). ``files``: the TSVs that may be read (None: every one found)."""
    times = stage_times(bench_dir, exclude={"report_figures"}, files=files)
    return times, [(r, stage_times(d / "benchmarks", files=files)) for r, d in round_dirs(bench_dir.parent, files)[1:]]


def throughput(
    measured: tuple[pd.DataFrame, list[tuple[int, pd.DataFrame]]],
    test_probs: Path,
    out_png: Path,
    out_html: Path,
    out_csv: Path,
    config: dict | None = None,
) -> pd.DataFrame:
    """Wall time per stage (``measured_times``: round one, later rounds) as a table and bar chart with the test-set
    images/s; with the run's config, the plan next to it."""
    times, rounds = measured
    plan_html = planned(
        config, str(json.loads(Path(test_probs).read_text()).get("device", "cpu")), [times] + [t for _, t in rounds]
    )
    extra = [t.assign(stage=t["stage"] + f" (round {r})") for r, t in rounds if not t.empty]
    if extra:
        times = pd.concat([t for t in (times, *extra) if not t.empty], ignore_index=True)
        times = times.sort_values(["total_s", "stage"], ascending=[False, True], ignore_index=True)
    times.to_csv(out_csv, index=False)
    probs = json.loads(Path(test_probs).read_text())
    line = (
        f"test set: {probs.get('n_images', '?')} images in {probs.get('seconds', math.nan):.1f} s, "
        f"{probs.get('images_per_s', math.nan):.2f} images/s on {probs.get('device', '?')}"
    )
    out_html.write_text(
        html_page("Time per stage", f"<p>{line}</p>" + times.to_html(index=False, border=0) + plan_html)
    )
    if times.empty:
        _note(out_png, "Time per stage", "No benchmark TSVs found.\n" + line)
        return times
    fig, ax = _plt().subplots(figsize=(8, 0.45 * len(times) + 1.6))
    ax.barh(times["stage"], times["total_s"], color="tab:blue")
    ax.invert_yaxis()
    ax.set_xlabel("wall seconds, all jobs of the stage"), ax.set_title(line, fontsize=10)
    _save(fig, out_png)
    return times


def run(args: argparse.Namespace, cfg: dict) -> None:
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for path in args.metrics:
        name, title = curve_name(path)
        training_curve(Path(path), title, out / name)
    means = oof_dice(Path(args.oof_dice), out / "oof_dice.png")
    threshold_curve(Path(args.curve), Path(args.threshold), out / "threshold.png")
    pseudo_labels(Path(args.results), out / "pseudo_labels.png", args.inputs)
    n_sheets = outlier_gallery(
        Path(args.outliers), Path(args.sheets), out / "outliers.html", out / "outlier_gallery.html"
    )
    first, later = measured_times(Path(args.results) / "benchmarks", args.inputs)  # read once, for both pages
    times = throughput(
        (first, later),
        Path(args.test_probs),
        out / "throughput.png",
        out / "stage_times.html",
        out / "stage_times.csv",
        json.loads(args.plan_config) if args.plan_config else None,
    )
    rows = landing.headline(
        Path(args.results),
        Path(args.threshold),
        Path(args.outliers),
        Path(args.sheets),
        Path(args.test_probs),
        json.loads(args.plan_config) if args.plan_config else None,
        [first] + [t for _, t in later],
        args.inputs,
    )
    landing.write(out / landing.FILE, rows)  # the report opens on it (workflow/report/workflow.rst)
    if args.oof_images:
        from carvana_seg.report import cars as report_cars

        images = report_cars.per_image(Path(args.oof_images), Path(args.folds))
        threshold = read_threshold(args.threshold)["threshold"]
        report_cars.write_page(
            out / "cars.html",
            images,
            report_cars.oof_sources(args.oof_npz, args.oof_weights),
            threshold,
            Path(args.raw),
            args.worst_cars,
            args.test_score,
        )
    log.info(
        "report figures in %s: %d training curves, %d variants, %d contact sheets, %d timed stages; "
        "mean OOF Dice per variant: %s",
        out,
        len(args.metrics),
        len(means),
        n_sheets,
        len(times),
        means.mean(axis=1).round(5).to_dict(),
    )
