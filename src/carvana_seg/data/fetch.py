"""The ``fetch`` stage: fill ``data/<name>/raw`` from Kaggle, a local copy or the synthetic generator.

The output directory never looks complete while half-written: local and Kaggle data are assembled in a
staging directory next to ``--out``, checked with ``validate_raw(quick=True)`` and renamed into place; the
synthetic generator renames its own output. ``--manifest`` (the Snakemake output) is written last. A failed
local fetch leaves nothing behind; a failed Kaggle fetch keeps only its staging directory
(``.raw.kaggle-partial``) when it holds verified archives, so the next run resumes instead of downloading
gigabytes again.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from dataclasses import asdict
from pathlib import Path

from carvana_seg.data import kaggle_source, local_source
from carvana_seg.data.validate import validate_raw
from carvana_seg.pipeline import staging
from carvana_seg.pipeline.errors import ConfigError, DataError
from carvana_seg.settings.build import build
from carvana_seg.settings.data import Data

log = logging.getLogger(__name__)

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="raw directory to fill (data/<name>/raw)")
    parser.add_argument("--threads", type=int, default=1, help="worker processes (synthetic generation, checks)")
    parser.add_argument("--manifest", help="JSON file written last, once --out is complete (the rule's output)")


def _checks(data: Data) -> dict:
    """The ``validate_raw`` settings of ``data``: a partial test set allowed, odd views an error (strict)."""
    return {"partial": bool(data.partial), "strict": bool(data.strict)}


def _fetch_synthetic(data: Data, out: Path, threads: int) -> dict:
    if out.name != "raw":
        raise ConfigError(f"--out {out}: the synthetic source writes <root>/raw, so --out must end in 'raw'")
    from carvana_seg.data import synthetic

    synthetic.generate(root=out.parent, workers=threads, **asdict(data.synthetic))
    try:
        return validate_raw(out, quick=True, workers=threads, **_checks(data))
    except BaseException:
        staging.remove(out)
        raise


def _fetch_local(data: Data, out: Path, threads: int) -> dict:
    path = data.path
    if not path:
        raise ConfigError("config key 'data.path': required when data.source is 'local'")
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")  # swept by the next fetch if we are killed
    try:
        with staging.write_errors(out, partial):
            staging.sweep(out)
            staging.remove(partial)
            partial.mkdir()
            local_source.link_local(Path(path), partial, hq=bool(data.hq))
            try:
                summary = validate_raw(partial, quick=True, workers=threads, **_checks(data))
            except DataError as exc:
                raise DataError(_user_paths(str(exc), partial, out)) from None
            staging.replace_dir(partial, out)
    except BaseException:
        staging.remove(partial)
        raise
    return summary


def _user_paths(message: str, partial: Path, out: Path) -> str:
    """``message`` naming the user's own files (what the staging links point at) instead of ``partial/...``;
    a path with no link behind it (an extracted zip member) is named as it will be in ``out``."""
    def user(m: re.Match) -> str:
        real = os.path.realpath(m.group(0))
        return real if not real.startswith(str(partial.resolve())) else m.group(0).replace(str(partial), str(out))

    return re.sub(re.escape(str(partial)) + r"[^\s:,()']*", user, message)


def _fetch_kaggle(data: Data, out: Path, threads: int) -> dict:
    kaggle_source.check_credentials()  # before anything is created on disk
    partial = out.with_name(f".{out.name}.kaggle-partial")
    try:
        with staging.write_errors(out, partial):
            kaggle_source.download(data.competition, partial, hq=bool(data.hq), include_test=bool(data.include_test))
            summary = validate_raw(partial, quick=True, workers=threads, **_checks(data))
    except BaseException:
        if not any((partial / kaggle_source.DOWNLOAD_DIR).glob("*.ok")):
            staging.remove(partial)
        else:
            log.info("keeping %s: verified archives there are reused by the next run", partial)
        raise
    staging.remove(partial / kaggle_source.DOWNLOAD_DIR)
    staging.replace_dir(partial, out)
    return summary


def fetch_raw(data: Data, out: Path, threads: int = 1) -> dict:
    """Fill ``out`` from ``data.source`` and return the quick validation summary."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    source = data.source
    fetchers = {"synthetic": _fetch_synthetic, "local": _fetch_local, "kaggle": _fetch_kaggle}
    if source not in fetchers:
        raise ConfigError(f"config key 'data.source': unknown source {source!r} (kaggle, local or synthetic)")
    log.info("fetching %s data into %s", source, out)
    summary = fetchers[source](data, out, max(1, threads))
    summary["raw"] = str(out)
    log.info("%s: %d training images (%d cars), %d test images", out, summary["n_train"],
             summary["n_cars_train"], summary["n_test"])
    return summary


def write_manifest(path: Path, data: dict, summary: dict) -> None:
    """Write the fetch manifest (the validated ``data`` section as given + quick summary) atomically: it marks
    ``raw`` as complete."""
    staging.write_text(path, json.dumps({"data": data, "summary": summary}, indent=2, sort_keys=True) + "\n")


def run(args: argparse.Namespace, cfg: dict) -> None:
    """CLI entry: ``python -m carvana_seg fetch --cfg ... --out data/<name>/raw [--manifest FILE]``."""
    data = build(Data, cfg["data"])
    if args.manifest:
        Path(args.manifest).unlink(missing_ok=True)  # a stale manifest must never vouch for new data
    summary = fetch_raw(data, Path(args.out), threads=args.threads)
    if args.manifest:
        write_manifest(Path(args.manifest), cfg["data"], summary)
