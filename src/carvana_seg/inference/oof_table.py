"""The ``oof-table`` stage: one table of per-image OOF Dice over every variant x fold, with a summary in the log.

Needs no config slice: its inputs are the ``fold<k>_dice.csv`` files of the ``oof`` stage.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from carvana_seg.pipeline import staging
from carvana_seg.pipeline.errors import DataError

log = logging.getLogger(__name__)

# The per-image OOF Dice table every ``oof`` job writes (one row per validation image) and this stage reads.
DICE_COLUMNS = ["img", "car", "fold", "variant", "dice"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--inputs", nargs="+", required=True, help="per variant x fold dice CSVs of the oof stage")
    parser.add_argument("--out", required=True, help="combined CSV (img, car, fold, variant, dice)")


def aggregate(dice_csvs: list[Path], out: Path) -> pd.DataFrame:
    """Concatenate the per-fold Dice tables into ``out`` (atomic) and return the combined table."""
    frames = []
    for path in map(Path, dice_csvs):
        if not path.is_file():
            raise DataError(f"{path}: OOF dice table not found")
        df = pd.read_csv(path, dtype={"img": str, "car": str, "variant": str})
        missing = [c for c in DICE_COLUMNS if c not in df.columns]
        if missing:
            raise DataError(f"{path}: missing columns {missing}")
        frames.append(df[DICE_COLUMNS])
    if not frames:
        raise DataError("oof-table: no input tables")
    table = pd.concat(frames, ignore_index=True).sort_values(["variant", "fold", "img"], ignore_index=True)
    dup = table.duplicated(["variant", "img"])
    if dup.any():
        raise DataError(
            f"oof-table: {int(dup.sum())} images appear twice for one variant, e.g. "
            f"{table.loc[dup, ['variant', 'img']].iloc[0].tolist()}"
        )
    staging.write_text(Path(out), table.to_csv(index=False))
    return table


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean Dice per variant (rows) and fold (columns), plus an ``all`` column over every OOF image."""
    per_fold = table.pivot_table(index="variant", columns="fold", values="dice", aggfunc="mean")
    per_fold.columns = [f"fold{c}" for c in per_fold.columns]
    per_fold["all"] = table.groupby("variant")["dice"].mean()
    per_fold["images"] = table.groupby("variant")["dice"].size()
    return per_fold


def run(args: argparse.Namespace, cfg: dict) -> None:  # noqa: ARG001 (no config slice)
    table = aggregate([Path(p) for p in args.inputs], Path(args.out))
    with pd.option_context("display.float_format", "{:.5f}".format, "display.width", 160):
        log.info(
            "OOF mean Dice per variant and fold (%d rows -> %s):\n%s", len(table), args.out, summary(table).to_string()
        )
