"""``data.source: kaggle``: download the competition files with the ``kaggle`` package, resumably.

Each archive goes to ``dest/.download/``; it counts as done only once it is non-empty and passes
``ZipFile.testzip()`` (marker ``<file>.ok``), so a rerun skips verified archives and fetches only the rest.
Archives are then extracted into ``dest`` in the Kaggle layout (marker ``<file>.extracted``) and deleted
unless ``keep_archives``. The API key is never logged, written, or put in an error message.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

from carvana_seg.data.local_source import extract_zip
from carvana_seg.pipeline.errors import CredentialsError, DataError

log = logging.getLogger(__name__)

DOWNLOAD_DIR = ".download"
NO_CREDENTIALS = (
    "Kaggle credentials not found: put your API token in ~/.kaggle/kaggle.json (chmod 600) "
    "or set KAGGLE_USERNAME and KAGGLE_KEY"
)


def archive_names(hq: bool, include_test: bool) -> list[str]:
    """The competition files to download, in download order."""
    names = ["train_hq.zip" if hq else "train.zip", "train_masks.zip", "train_masks.csv.zip"]
    if include_test:
        names.append("test_hq.zip" if hq else "test.zip")
    return names + ["metadata.csv.zip", "sample_submission.csv.zip"]


def _config_dirs() -> list[Path]:
    """Where the kaggle package looks for ``kaggle.json``."""
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        return [Path(os.environ["KAGGLE_CONFIG_DIR"]).expanduser()]
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return [Path("~/.kaggle").expanduser(), Path(xdg) / "kaggle"]


def check_credentials() -> str:
    """Where the Kaggle credentials come from (never their value); raise CredentialsError when there are none."""
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "environment (KAGGLE_USERNAME, KAGGLE_KEY)"
    if os.environ.get("KAGGLE_API_TOKEN"):
        return "environment (KAGGLE_API_TOKEN)"
    for directory in _config_dirs():
        path = directory / "kaggle.json"
        if path.is_file():
            try:
                values = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise CredentialsError(f"{path}: unreadable Kaggle token file ({type(exc).__name__})") from None
            if not (isinstance(values, dict) and values.get("username") and values.get("key")):
                raise CredentialsError(f"{path}: Kaggle token file lacks 'username' and 'key'")
            return str(path)
    token = Path("~/.kaggle/access_token").expanduser()
    if token.is_file() and token.stat().st_size > 0:
        return str(token)
    raise CredentialsError(NO_CREDENTIALS)


def _secrets() -> list[str]:
    """Secret values to scrub from any message we build from a third-party exception."""
    values = [os.environ.get("KAGGLE_KEY", ""), os.environ.get("KAGGLE_API_TOKEN", "")]
    for directory in _config_dirs():
        try:
            values.append(str(json.loads((directory / "kaggle.json").read_text()).get("key", "")))
        except (OSError, ValueError, AttributeError):
            pass
    return [v for v in values if len(v) >= 4]


def _scrub(text: str) -> str:
    for secret in _secrets():
        text = text.replace(secret, "***")
    return " ".join(text.split())[:300]


def make_api() -> Any:
    """An authenticated ``KaggleApi``; imported only here, after the credential check, since it may exit."""
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi

        api = KaggleApi()
        api.authenticate()
    except SystemExit:
        raise CredentialsError("Kaggle authentication failed: the kaggle package rejected the credentials") from None
    except Exception as exc:  # noqa: BLE001 - anything from the client is reported as one line
        raise CredentialsError(f"Kaggle authentication failed: {type(exc).__name__}: {_scrub(str(exc))}") from None
    return api


def _api_error(exc: BaseException, competition: str, name: str) -> Exception:
    """Translate an exception from the Kaggle client into one CredentialsError/DataError line."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    detail = f"{type(exc).__name__}: {_scrub(str(exc))}"
    if status in (401, 403):
        return CredentialsError(
            f"Kaggle refused {name} of '{competition}' (HTTP {status}): check your API token and accept the "
            f"competition rules at https://www.kaggle.com/c/{competition}/rules ({detail})"
        )
    if status == 404:
        return DataError(f"Kaggle has no file {name} in competition '{competition}' ({detail})")
    if status is not None:
        return DataError(f"Kaggle answered HTTP {status} for {name} of '{competition}' ({detail})")
    if isinstance(exc, (ConnectionError, TimeoutError, OSError)) or "Connection" in type(exc).__name__:
        return CredentialsError(f"network error while downloading {name} from Kaggle ({detail})")
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
