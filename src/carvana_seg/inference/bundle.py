"""``python -m carvana_seg bundle --models results/<name> --out FILE``: a run's final ensemble as one portable file.

``serve --models FILE`` and ``predict --models FILE`` load it without the results tree and give the same masks as
from the directory (the same ``inference.service`` path over the same checkpoints and settings).

The file is a zip (stored, not deflated: checkpoints do not compress) holding

- ``bundle.json``: format and version, the run's name, the final ensemble's manifest fields (model order, flip-TTA,
  edge refinement, variant weights, config hash), its ``threshold.json`` (threshold and OOF Dice), what the models
  were trained on (``inference.provenance``), and the SHA-256 of every other member;
- ``threshold.json`` as the run wrote it, and every checkpoint as ``models/<variant>/<fold>/best.pt`` (each carries
  its variant's settings and normalisation, as in the results tree).

Loading checks every checksum once and unpacks into a cache directory keyed by the bundle's content, size and mtime
(``$CARVANA_SEG_BUNDLE_CACHE``, default ``~/.cache/carvana-seg/bundles``), reused while the file is unchanged; the ONNX
exports of ``--backend onnx`` land there too. A damaged, truncated or foreign file is one ``DataError`` naming it.
At the competition's scale a bundle of 15 models is their checkpoints' size (each 100-300 MB for a ResNet34 to
EfficientNet U-Net), with no overhead beyond a few kB of JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import re
import zipfile
from pathlib import Path

from carvana_seg.inference import provenance
from carvana_seg.pipeline import staging
from carvana_seg.pipeline.errors import DataError

log = logging.getLogger(__name__)
FORMAT, VERSION = "carvana-seg-bundle", 1
META = "bundle.json"
CACHE_ENV = "CARVANA_SEG_BUNDLE_CACHE"
REQUIRED = ("run", "models", "sha256", "tta_hflip", "edge_refine", "weights", "config_hash", "trained_on")
SAFE_PART = re.compile(r"[A-Za-z0-9_.-]+")
# the only member names a bundle may have besides threshold.json: nothing can be written outside its tree
SAFE_MODEL = re.compile(r"models/[A-Za-z0-9_-][A-Za-z0-9_.-]*/fold\d+/best\.pt")


def _sha(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def write_bundle(results: str | os.PathLike, out: str | os.PathLike) -> dict:
    """Pack the final ensemble of ``results`` into ``out`` (written under a temporary name, then renamed)."""
    from carvana_seg.inference.service import read_run

    info = read_run(results)
    members = {f"models/{m.parent.parent.name}/{m.parent.name}/best.pt": m for m in info.models}
    threshold = info.round_dir / "threshold.json"
    if threshold.is_file():
        members["threshold.json"] = threshold
    sizes = []
    for m in info.models:  # the networks' sizes, from the checkpoints' variant settings
        from carvana_seg.models.model import load_checkpoint

        v = load_checkpoint(m)["config"]["variant"]
        sizes.append((int(v["width"]), int(v["height"])))
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "run": info.name,
        "round": info.round_dir.name if info.round_dir != info.results else "round1",
        "models": list(members)[: len(info.models)],
        "tta_hflip": info.tta_hflip,
        "edge_refine": dataclasses.asdict(info.edge_refine),
        "weights": info.weights,
        "config_hash": info.config_hash,
        "threshold": info.threshold,
        "oof_dice": info.oof_dice,
        "trained_on": provenance.trained_on(info.results, sizes),
        "sha256": {name: _sha(path) for name, path in members.items()},
    }
    with staging.staged_file(Path(out)) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(META, json.dumps(meta, indent=2) + "\n")
        for name, path in members.items():
            zf.write(path, name)
    log.info(
        "bundled %s (%d models, threshold %.4f, trained on %s) -> %s, %.1f MB",
        info.name,
        len(info.models),
        info.threshold,
        provenance.describe(meta["trained_on"], info.oof_dice),
        out,
        Path(out).stat().st_size / 1e6,
    )
    return meta


def read_meta(path: Path) -> dict:
    """``bundle.json`` of ``path``; DataError when it is not a complete bundle of a format this version reads."""
    try:
        with zipfile.ZipFile(path) as zf:
            if META not in zf.namelist():
                raise DataError(f"{path}: not a carvana-seg bundle (a zip without {META}); make one with bundle")
            meta = json.loads(zf.read(META))
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise DataError(f"{path}: not a complete carvana-seg bundle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise DataError(f"{path}: {META} is not a carvana-seg bundle's (format {found!r})")
    if meta.get("version") != VERSION:
        raise DataError(f"{path}: bundle version {meta.get('version')}, this carvana-seg reads version {VERSION}")
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise DataError(f"{path}: {META} lacks {missing}")
    if not isinstance(meta["run"], str) or not SAFE_PART.fullmatch(meta["run"]) or meta["run"] in (".", ".."):
        raise DataError(f"{path}: {META} names an unsafe run {meta['run']!r}")
    members = meta["sha256"]
    if not isinstance(members, dict) or not isinstance(meta["models"], list):
        raise DataError(f"{path}: {META} has a malformed sha256 or models entry")
    unsafe = [n for n in members if not (n == "threshold.json" or SAFE_MODEL.fullmatch(str(n)))]
    unlisted = [m for m in meta["models"] if m not in members]
    if unsafe or unlisted:
        raise DataError(f"{path}: {META} lists unsafe or missing members {(unsafe or unlisted)[:3]}")
    return meta


def unpack(path: str | os.PathLike) -> tuple[Path, dict]:
    """The bundle's results tree in the cache (unpacked and checked once) and its ``bundle.json``."""
    path = Path(path)
    meta = read_meta(path)
    st = path.stat()  # a changed (or damaged) copy of the same bundle is unpacked and checked again
    key = hashlib.sha256(f"{json.dumps(meta, sort_keys=True)}{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    root = cache_dir() / key
    results = root / meta["run"]
    if (results / "test_probs.json").is_file():  # written last: the tree is complete
        return results, meta
    with staging.scratch_dir(root) as scratch:
        tree = scratch / meta["run"]
        try:
            with zipfile.ZipFile(path) as zf:
                for name, digest in meta["sha256"].items():
                    target = tree / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(name) as src, open(target, "wb") as dst:
                        h = hashlib.sha256()
                        while chunk := src.read(1 << 20):
                            h.update(chunk)
                            dst.write(chunk)
                    if h.hexdigest() != digest:
                        raise DataError(f"{path}: damaged bundle: {name} does not match its checksum")
        except (zipfile.BadZipFile, KeyError, OSError, TypeError) as exc:
            raise DataError(f"{path}: damaged bundle ({type(exc).__name__}: {exc})") from exc
        manifest = {
            "models": [str((results / m).resolve()) for m in meta["models"]],
            **{k: meta[k] for k in ("tta_hflip", "edge_refine", "weights", "config_hash")},
        }
        (tree / "test_probs.json").write_text(json.dumps(manifest, indent=2) + "\n")
        try:
            os.replace(scratch, root)
        except OSError:  # another process unpacked it meanwhile
            if not (results / "test_probs.json").is_file():
                raise
    return results, meta


def cache_dir() -> Path:
    """``$CARVANA_SEG_BUNDLE_CACHE``, else the user's ``~/.cache/carvana-seg/bundles`` (private: mode 0700), so
    that no other user of the machine can plant weights in a tree that is not checked again."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "carvana-seg" / "bundles"
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    return root


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", required=True, help="results directory results/<name>/ (its final ensemble)")
    parser.add_argument("--out", required=True, help="the bundle file to write (for example demo.cseg.zip)")


def run(args: argparse.Namespace, cfg: dict) -> None:
    write_bundle(Path(args.models), Path(args.out))
