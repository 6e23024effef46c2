"""``data.source: local``: bring an existing Kaggle-layout copy into ``data/<name>/raw``.

The copy may hold the directories (``train/``, ``train_masks/``, ``test/`` and the csv files), which are
symlinked rather than copied, or the Kaggle zips (``train.zip`` or ``train_hq.zip``, ``train_masks.zip``,
``test.zip`` or ``test_hq.zip``, ``*.csv.zip``), which are extracted. Both may be mixed, part by part.
"""

from __future__ import annotations

import logging
import os
import shutil
import zipfile
from pathlib import Path, PurePosixPath

from carvana_seg.core import layout
from carvana_seg.pipeline.errors import DataError

log = logging.getLogger(__name__)

# Directory parts: the name in the Kaggle layout, and the names the competition's hq variants use.
DIR_PARTS: dict[str, tuple[str, ...]] = {
    layout.TRAIN_DIR: ("train", "train_hq"),
    layout.MASK_DIR: ("train_masks",),
    layout.TEST_DIR: ("test", "test_hq"),
}
REQUIRED_FILES = (layout.TRAIN_MASKS_CSV, layout.SAMPLE_SUBMISSION_CSV)
OPTIONAL_FILES = (layout.METADATA_CSV,)
# Top-level names inside the zips that map onto a different name in the Kaggle layout.
RENAMES = {"train_hq": layout.TRAIN_DIR, "test_hq": layout.TEST_DIR}


def _safe_member(name: str) -> PurePosixPath | None:
    """Relative destination of a zip member in the Kaggle layout; None for directories and macOS metadata."""
    if name.endswith("/"):
        return None
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise DataError(f"unsafe path in archive: {name!r}")
    if path.parts[0] == "__MACOSX" or path.name.startswith("._"):
        return None
    parts = list(path.parts)
    parts[0] = RENAMES.get(parts[0], parts[0])
    return PurePosixPath(*parts)


def extract_zip(archive: Path, dest: Path) -> list[str]:
    """Extract a Kaggle zip into ``dest`` (``train_hq/`` becomes ``train/``); return the top-level names written."""
    tops: set[str] = set()
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                rel = _safe_member(info.filename)
                if rel is None:
                    continue
                target = dest.joinpath(*rel.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                tops.add(rel.parts[0])
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as exc:
        raise DataError(f"{archive}: cannot extract archive ({exc})") from exc
    return sorted(tops)


def _find_dir(src: Path, part: str, hq: bool) -> Path | None:
    """The directory in ``src`` that provides ``part``, preferring the hq variant when ``hq``."""
    names = DIR_PARTS[part]
    for name in sorted(names, key=lambda n: n.endswith("_hq") != hq):
        if (src / name).is_dir():
            return src / name
    return None


def _find_zip(src: Path, part: str, hq: bool) -> Path | None:
    """The zip in ``src`` that provides a directory part (or a csv file), preferring hq when ``hq``."""
    names = DIR_PARTS.get(part, (part,))
    for name in sorted(names, key=lambda n: n.endswith("_hq") != hq):
        if (src / f"{name}.zip").is_file():
            return src / f"{name}.zip"
    return None


def plan(src: Path, hq: bool = False) -> dict[str, Path]:
    """Map each Kaggle-layout part to the directory, file or zip in ``src`` that provides it.

    Raises DataError naming every required part that is missing.
    """
    found: dict[str, Path] = {}
    missing: list[str] = []
    for part in DIR_PARTS:
        where = _find_dir(src, part, hq) or _find_zip(src, part, hq)
        if where is None:
            missing.append(f"{part}/ (or {part}.zip)")
        else:
            found[part] = where
    for part in REQUIRED_FILES + OPTIONAL_FILES:
        where = src / part if (src / part).is_file() else _find_zip(src, part, hq)
        if where is not None:
            found[part] = where
        elif part in REQUIRED_FILES:
            missing.append(f"{part} (or {part}.zip)")
    if missing:
        raise DataError(f"{src}: local data is missing {', '.join(missing)}")
    return found


def link_local(src: Path, dest: Path, hq: bool = False) -> None:
    """Fill ``dest`` (created if needed) from the Kaggle-layout copy ``src``: symlink directories, extract zips."""
    src = Path(src).expanduser()
    if not src.is_dir():
        raise DataError(f"{src}: local data directory not found (data.path)")
    src = src.resolve()
    parts = plan(src, hq)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    extracted: set[Path] = set()
    for part, where in parts.items():
        if where.suffix == ".zip":
            if where not in extracted:
                log.info("extracting %s", where)
                extract_zip(where, dest)
                extracted.add(where)
            if not (dest / part).exists():
                raise DataError(f"{where}: archive does not contain {part}")
        else:
            os.symlink(where, dest / part, target_is_directory=where.is_dir())
            log.info("linked %s -> %s", dest / part, where)
