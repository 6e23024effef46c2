"""``data.source: kaggle``: download the competition files with the ``kaggle`` package, resumably.

Each archive goes to ``dest/.download/``; it counts as done only once it is non-empty and passes
``ZipFile.testzip()`` (marker ``<file>.ok``), so a rerun skips verified archives and fetches only the rest.
Archives are then extracted into ``dest`` in the Kaggle layout (marker ``<file>.extracted``) and deleted
unless ``keep_archives``. Credentials are found as the ``kaggle`` package finds them (``kaggle_credentials``);
the API key is never logged, written, or put in an error message.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

from carvana_seg.data.kaggle_credentials import NO_CREDENTIALS, check_credentials, scrub  # noqa: F401 (re-exported)
from carvana_seg.data.local_source import extract_zip
from carvana_seg.pipeline import staging
from carvana_seg.pipeline.errors import CredentialsError, DataError, WriteError

log = logging.getLogger(__name__)

DOWNLOAD_DIR = ".download"
def archive_names(hq: bool, include_test: bool) -> list[str]:
    """The competition files to download, in download order."""
    names = ["train_hq.zip" if hq else "train.zip", "train_masks.zip", "train_masks.csv.zip"]
    if include_test:
        names.append("test_hq.zip" if hq else "test.zip")
    return names + ["metadata.csv.zip", "sample_submission.csv.zip"]


def make_api() -> Any:
    """An authenticated ``KaggleApi``; imported only here, after the credential check, since it may exit."""
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi

        api = KaggleApi()
        api.authenticate()
    except SystemExit:
        raise CredentialsError("Kaggle authentication failed: the kaggle package rejected the credentials") from None
    except Exception as exc:  # noqa: BLE001 - anything from the client is reported as one line
        raise CredentialsError(f"Kaggle authentication failed: {type(exc).__name__}: {scrub(str(exc))}") from None
    return api


def _api_error(exc: BaseException, competition: str, name: str, upload: bool = False) -> Exception:
    """Translate an exception from the Kaggle client into one CredentialsError/DataError line (``upload``: the
    failed call sent ``name`` to Kaggle rather than fetching it)."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    detail = f"{type(exc).__name__}: {scrub(str(exc))}"
    what = f"the upload of {name} to '{competition}'" if upload else f"{name} of '{competition}'"
    if status in (401, 403):
        return CredentialsError(
            f"Kaggle refused {what} (HTTP {status}): check your API token and accept the "
            f"competition rules at https://www.kaggle.com/c/{competition}/rules ({detail})"
        )
    if status == 404:
        if upload:
            return DataError(f"Kaggle has no competition '{competition}' to submit {name} to ({detail})")
        return DataError(f"Kaggle has no file {name} in competition '{competition}' ({detail})")
    if status is not None:
        return DataError(f"Kaggle answered HTTP {status} for {what} ({detail})")
    verb = f"uploading {name} to" if upload else f"downloading {name} from"
    if isinstance(exc, OSError) and exc.errno in staging.WRITE_ERRNOS and not upload:
        return WriteError(f"cannot write {staging.public_path(exc.filename or name)}: {os.strerror(exc.errno)}")
    if isinstance(exc, (ConnectionError, TimeoutError, OSError)) or "Connection" in type(exc).__name__:
        return CredentialsError(f"network error while {verb} Kaggle ({detail})")
    if upload:
        return DataError(f"upload of {name} to Kaggle competition '{competition}' failed ({detail})")
    return DataError(f"download of {name} from Kaggle competition '{competition}' failed ({detail})")


def verify_zip(path: Path) -> str | None:
    """None if ``path`` is a non-empty zip whose members all pass their CRC check, else what is wrong."""
    if not path.is_file():
        return "file not found after download"
    if path.stat().st_size == 0:
        return "empty file"
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        return f"not a valid zip ({exc})"
    return None if bad is None else f"corrupt member {bad}"


def _download_one(api: Any, competition: str, name: str, dl: Path) -> None:
    """Download and verify one archive, re-downloading once if it is corrupt; then write its ``.ok`` marker."""
    path = dl / name
    problem = None
    for attempt in (1, 2):
        log.info("downloading %s from Kaggle competition '%s'%s", name, competition, " (again)" * (attempt > 1))
        try:
            api.competition_download_file(competition, name, path=str(dl), force=attempt > 1, quiet=True)
        except (Exception, SystemExit) as exc:  # noqa: BLE001
            raise _api_error(exc, competition, name) from None
        problem = verify_zip(path)
        if problem is None:
            (dl / f"{name}.ok").write_text(json.dumps({"size": path.stat().st_size}) + "\n")
            return
        log.warning("%s: %s; downloading it again", path, problem)
        path.unlink(missing_ok=True)
    raise DataError(f"{path}: downloaded archive is unusable ({problem}), even after downloading it again")


def download(competition: str, dest: Path, hq: bool, include_test: bool, api: Any = None,
             keep_archives: bool = False) -> None:
    """Download the competition into ``dest`` in Kaggle layout; reruns skip archives already verified.

    Without ``include_test`` an empty ``test/`` is created so the layout stays complete.
    """
    source = check_credentials()
    log.info("using Kaggle credentials from %s", source)
    if api is None:
        api = make_api()
    dest = Path(dest)
    dl = dest / DOWNLOAD_DIR
    dl.mkdir(parents=True, exist_ok=True)
    names = archive_names(hq, include_test)
    for name in names:
        done = (dl / f"{name}.extracted").exists() or ((dl / f"{name}.ok").exists() and (dl / name).is_file())
        if done:
            log.info("%s already downloaded and verified; skipping", name)
            continue
        _download_one(api, competition, name, dl)
    for name in names:
        if (dl / f"{name}.extracted").exists():
            continue
        log.info("extracting %s", name)
        extract_zip(dl / name, dest)
        (dl / f"{name}.extracted").write_text("")
        if not keep_archives:
            (dl / name).unlink()
    if not include_test:
        (dest / "test").mkdir(exist_ok=True)
