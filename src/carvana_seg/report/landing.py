"""The report's landing page: the run's headline numbers, written as reStructuredText for the page Snakemake's report
opens on.

``snakemake --report`` opens on the workflow description (``workflow/report/workflow.rst``, the Snakefile's
``report:`` directive), not on a result, so that description includes ``landing.rst``, which the report-figures
stage writes here beside the figures: the OOF (and, where the masks are known, test) Dice per round, the threshold,
the ensemble, the flagged cars, the submission and whether it is partial, and the planned against the measured
cost. Every number is read from the files the run wrote; nothing is recomputed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from carvana_seg.inference.threshold_file import read_threshold
from carvana_seg.pipeline import rounds
from carvana_seg.pipeline.config import fold_ids
from carvana_seg.report.tables import Files, may_read, normalize_files, round_dirs

FILE = "landing.rst"
MODEL_STAGES_NOTE = "model stages: train, oof, ensemble, outliers"


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def dice_per_round(results: Path, files: Files = None) -> tuple[dict[int, float], dict[int, float]]:
    """(OOF ensemble Dice, test Dice) per round: each round's ``threshold.json`` (the threshold stage's mean Dice at
    its threshold) and its ``test_score*.json`` where the test masks are known (synthetic data). ``files``: the
    rule's declared inputs, the only files read (None: whatever exists)."""
    allowed = normalize_files(files)
    found = round_dirs(results, allowed)
    last = max(r for r, _ in found)
    oof = {}
    for r, d in found:
        if may_read(d / "threshold.json", allowed) and "mean_dice" in (t := read_threshold(d / "threshold.json")):
            oof[r] = float(t["mean_dice"])
    test = {}
    for r, _ in found:
        path = Path(results) / f"test_score{'' if r == last else f'_round{r}'}.json"
        if may_read(path, allowed) and "mean_dice" in (score := _json(path)):
            test[r] = float(score["mean_dice"])
    return oof, test


def _per_round(values: dict[int, float]) -> str:
    return ", ".join(f"round {r} **{v:.5f}**" for r, v in sorted(values.items()))


def ensemble_line(config: dict | None, manifest: dict[str, Any]) -> str:
    """Which models the final submission averages: variants (architecture, size, weight, the round they are
    from) x folds; without the config, the number of checkpoints the ensemble loaded."""
    if config is None:
        return f"{len(manifest.get('models', []))} checkpoints"
    last = rounds.last_round(config)
    folds = fold_ids(config)
    parts = []
    for v in config["variants"]:
        r = rounds.latest_round(config, v["name"], last)
        parts.append(
            f"``{v['name']}`` ({v['arch']} {v['encoder']}, {v['width']}x{v['height']}, "
            f"weight {float(v['weight']):g}"
            f"{f', round {r}' if last > 1 else ''})"
        )
    return f"{len(parts)} variant{'s' if len(parts) != 1 else ''} x {len(folds)} folds: " + "; ".join(parts)


def flagged_line(outliers_csv: Path, sheets_json: Path) -> str:
    """The test cars the outlier check flagged (ids), with its action."""
    table = pd.read_csv(outliers_csv, dtype={"car": str}) if outliers_csv.is_file() else pd.DataFrame()
    action = _json(sheets_json).get("action", "?")
    if table.empty:
        return f"none (outlier check, action ``{action}``)"
    cars = sorted(table["car"].unique())
    return (
        f"**{len(cars)}** car{'s' if len(cars) != 1 else ''} ({len(table)} image{'s' if len(table) != 1 else ''}), "
        f"action ``{action}``: " + ", ".join(f"``{c}``" for c in cars) + " (see *5. Outliers*)"
    )


def submission_line(results: Path, config: dict | None, manifest: dict[str, Any]) -> str:
    """The submission's path and whether it covers every listed test image (a partial one Kaggle refuses)."""
    name = config["name"] if config else Path(results).name
    n, listed = manifest.get("n_images"), manifest.get("n_listed")
    partial = manifest.get("partial", config["data"]["partial"] if config else None)
    path = f"``results/{name}/submission.csv.gz``"
    if partial:
        count = f"{n:,} of {listed:,}" if n is not None and listed is not None else "some of the"
        return f"{path}: **partial**, {count} listed test images (Kaggle refuses it)"
    if partial is None:
        return path
    return f"{path}: complete, {n:,} test images" if n is not None else f"{path}: complete"


def cost_line(config: dict | None, device: str, measured: list[pd.DataFrame]) -> str:
    """Planned device-hours of the model stages (``carvana_seg.plan`` for the run's device) against the measured
    job hours of those stages and of all stages, from the rules' benchmark files."""
    if config is None:
        return "not planned (no config given)"
    from carvana_seg.plan.command import make_plan
    from carvana_seg.plan.compare import compare, device_row

    plan = make_plan(config, device_row(device))
    table = compare(plan, measured)
    model = table["planned_hours"].notna()
    planned_h = float(table.loc[model, "planned_hours"].sum())
    measured_model = float(table.loc[model, "measured_hours"].fillna(0).sum())
    measured_all = float(table["measured_hours"].fillna(0).sum())
    return (
        f"planned **{planned_h:.3f}** device-hours on {plan['device']['name']} ({MODEL_STAGES_NOTE}), "
        f"measured **{measured_model:.3f}** h of job time for them and {measured_all:.3f} h for every stage; "
        f"planned peak disk {plan['peak_disk'] / 1e9:.2f} GB (table: *6. Throughput*)"
    )


def headline(
    results: Path,
    threshold_json: Path,
    outliers_csv: Path,
    sheets_json: Path,
    test_probs: Path,
    config: dict | None,
    measured: list[pd.DataFrame],
    files: Files = None,
) -> list[tuple[str, str]]:
    """(label, reStructuredText) rows of the landing page, in reading order; ``files``: ``dice_per_round``'s."""
    oof, test = dice_per_round(results, files)
    threshold = read_threshold(threshold_json)
    manifest = _json(test_probs)
    # short labels: docutils puts a field name over 14 characters on a row of its own
    rows = [("OOF Dice", f"{_per_round(oof)} (the ensemble, out of fold)" if oof else "not measured")]
    rows.append(
        (
            "Test Dice",
            f"{_per_round(test)} (the submission, known masks)" if test else "not known (the test masks are hidden)",
        )
    )
    rows.append(
        (
            "Threshold",
            f"**{float(threshold['threshold']):.4f}** ({threshold.get('source', 'search')} on "
            f"{threshold.get('n_images', '?')} out-of-fold images)",
        )
    )
    rows.append(("Ensemble", ensemble_line(config, manifest)))
    rows.append(("Flagged cars", flagged_line(outliers_csv, sheets_json)))
    rows.append(("Submission", submission_line(results, config, manifest)))
    rows.append(("Cost", cost_line(config, str(manifest.get("device", "cpu")), measured)))
    return rows


def to_rst(rows: list[tuple[str, str]]) -> str:
    """A field list (docutils renders it as a two-column table)."""
    return "**This run**\n\n" + "".join(f":{label}: {text}\n" for label, text in rows) + "\n"


def write(path: Path, rows: list[tuple[str, str]]) -> None:
    Path(path).write_text(to_rst(rows))
