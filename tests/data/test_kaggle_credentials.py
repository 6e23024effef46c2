"""Kaggle credentials: every form the installed ``kaggle`` package accepts is accepted (checked against the package
itself, with its network calls stubbed), a half-set pair gets its own message, an upload failure says uploading,
and no secret reaches a message, a log line or a file."""

from __future__ import annotations

import json
import logging
import os
import types
from pathlib import Path

import pytest

from carvana_seg.data import kaggle_credentials, kaggle_source
from carvana_seg.pipeline import cli
from carvana_seg.pipeline.errors import CredentialsError, DataError
from carvana_seg.submission import kaggle_submit

SECRET = "kgl-SECRET-4f9a2c7e1b"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty home and no KAGGLE_* variables."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in list(os.environ):
        if var.startswith("KAGGLE_") or var == "XDG_CONFIG_HOME":
            monkeypatch.delenv(var)
    return home


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _legacy_json(home: Path) -> dict:
    return {"username": "someone", "key": SECRET}


# form -> (set it up in home with monkeypatch, expected source description, substring)
FORMS = {
    "kaggle.json in ~/.kaggle": lambda h, m: _write(h / ".kaggle/kaggle.json", json.dumps(_legacy_json(h))),
    "kaggle.json in KAGGLE_CONFIG_DIR": lambda h, m: (m.setenv("KAGGLE_CONFIG_DIR", str(h / "cfg")),
                                                      _write(h / "cfg/kaggle.json", json.dumps(_legacy_json(h)))),
    "kaggle.json in XDG_CONFIG_HOME": lambda h, m: (m.setenv("XDG_CONFIG_HOME", str(h / "xdg")),
                                                    _write(h / "xdg/kaggle/kaggle.json", json.dumps(_legacy_json(h)))),
    "KAGGLE_USERNAME and KAGGLE_KEY": lambda h, m: (m.setenv("KAGGLE_USERNAME", "someone"),
                                                    m.setenv("KAGGLE_KEY", SECRET)),
    "KAGGLE_KEY with kaggle.json's username": lambda h, m: (m.setenv("KAGGLE_KEY", SECRET),
                                                            _write(h / ".kaggle/kaggle.json", '{"username": "x"}')),
    "KAGGLE_API_TOKEN value": lambda h, m: m.setenv("KAGGLE_API_TOKEN", SECRET),
    "KAGGLE_API_TOKEN file": lambda h, m: m.setenv("KAGGLE_API_TOKEN", str(_write(h / "tok", SECRET + "\n"))),
    "~/.kaggle/access_token": lambda h, m: _write(h / ".kaggle/access_token", SECRET),
    "~/.kaggle/access_token.txt": lambda h, m: _write(h / ".kaggle/access_token.txt", SECRET),
    "kaggle auth login (credentials.json)": lambda h, m: _write(
        h / ".kaggle/credentials.json", json.dumps({"refresh_token": SECRET, "access_token": SECRET + "x",
                                                   "username": "someone"})),
    "Kaggle notebook token": lambda h, m: (m.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive"),
                                           m.setenv("KAGGLE_DATA_PROXY_URL", "http://proxy"),
                                           m.setenv("KAGGLE_API_V1_TOKEN", str(_write(h / "nb", SECRET)))),
}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_every_credential_form_is_accepted(home: Path, monkeypatch: pytest.MonkeyPatch, form: str) -> None:
    FORMS[form](home, monkeypatch)
    source = kaggle_credentials.check_credentials()
    assert SECRET not in source
    assert SECRET in kaggle_credentials.secrets()
    assert SECRET not in kaggle_credentials.scrub(f"error: token {SECRET} refused")


def _kaggle_accepts(monkeypatch: pytest.MonkeyPatch) -> bool:
    """Whether the installed kaggle package's own ``authenticate`` accepts the current environment (its network
    calls stubbed: any token is valid, the OAuth refresh succeeds)."""
    from kaggle.api import kaggle_api_extended as ext

    monkeypatch.setattr(ext.KaggleApi, "config_dir", str(kaggle_credentials.config_dir()))
    monkeypatch.setattr(ext.KaggleApi, "config", str(kaggle_credentials.config_dir() / "kaggle.json"))
    monkeypatch.setattr(ext.KaggleApi, "_introspect_token", lambda self, token: "someone")

    class Creds:
        DEFAULT_CREDENTIALS_FILE = "~/.kaggle/credentials.json"

        @classmethod
        def load(cls, client=None, file_path=None):
            path = Path(os.path.expanduser(file_path or "~/.kaggle/credentials.json"))
            data = json.loads(path.read_text()) if path.is_file() else {}
            return cls() if data.get("refresh_token") else None

        def get_access_token(self):
            return "t"

        def get_username(self):
            return "someone"

    monkeypatch.setattr(ext, "KaggleCredentials", Creds)
    api = ext.KaggleApi()
    try:
        api.authenticate()
    except SystemExit:
        return False
    return True


@pytest.mark.parametrize("form", sorted(FORMS))
def test_the_kaggle_package_agrees(home: Path, monkeypatch: pytest.MonkeyPatch, form: str) -> None:
    FORMS[form](home, monkeypatch)
    assert _kaggle_accepts(monkeypatch)


@pytest.mark.parametrize("only, message", [
    ("KAGGLE_KEY", "KAGGLE_KEY is set but KAGGLE_USERNAME is not"),
    ("KAGGLE_USERNAME", "KAGGLE_USERNAME is set but KAGGLE_KEY is not"),
])
def test_half_a_key_pair_has_its_own_message(home: Path, monkeypatch: pytest.MonkeyPatch, only: str,
                                             message: str) -> None:
    monkeypatch.setenv(only, SECRET if only == "KAGGLE_KEY" else "someone")
    with pytest.raises(CredentialsError, match=message) as info:
        kaggle_credentials.check_credentials()
    assert SECRET not in str(info.value)
    assert not _kaggle_accepts(monkeypatch)  # the package refuses it too (with a generic help text)


def test_nothing_set_names_every_form(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(home / ".kaggle/credentials.json", "{}")  # logged out: no refresh token
    with pytest.raises(CredentialsError) as info:
        kaggle_credentials.check_credentials()
    for hint in ("kaggle auth login", "KAGGLE_API_TOKEN", "kaggle.json", "KAGGLE_USERNAME and KAGGLE_KEY"):
        assert hint in str(info.value)
    assert not _kaggle_accepts(monkeypatch)


class FailingApi:
    """A Kaggle API whose upload fails with the given exception (whose text carries the secret)."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def competition_submit(self, file_name, message, competition):
        raise self.exc


def _http(status: int) -> Exception:
    exc = RuntimeError(f"HTTP {status} for token {SECRET}")
    exc.response = types.SimpleNamespace(status_code=status)
    return exc


@pytest.mark.parametrize("exc, message", [
    (ConnectionError(f"reset while sending (key {SECRET})"), "network error while uploading .*sub.csv.gz to Kaggle"),
    (_http(401), "Kaggle refused the upload of .*sub.csv.gz to 'comp' \\(HTTP 401\\)"),
    (_http(500), "Kaggle answered HTTP 500 for the upload of .*sub.csv"),
    (ValueError(f"bad {SECRET}"), "upload of .*sub.csv.gz to Kaggle competition 'comp' failed"),
])
def test_failed_upload_says_uploading_and_hides_the_key(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                        capsys: pytest.CaptureFixture, exc: BaseException,
                                                        message: str) -> None:
    from tests.helpers import SUBMISSION_IMGS as IMGS
    from tests.helpers import fabricate_shards as fabricate
    from tests.helpers import write_submission as write

    raw, manifest, threshold, _ = fabricate(tmp_path)
    _, sub = write(tmp_path, raw, manifest, threshold)
    sub = sub.rename(sub.with_name("sub.csv" + "".join(sub.suffixes[1:])))
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", SECRET)
    monkeypatch.setattr(kaggle_submit, "make_api", lambda: FailingApi(exc))
    out = tmp_path / "record.json"
    argv = ["submit", "--cfg", json.dumps({"name": "n"}), "--submission", str(sub), "--competition", "comp",
            "--config-hash", "h", "--raw", str(raw), "--out", str(out)]
    with caplog.at_level(logging.DEBUG):
        assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "download" not in err, err
    with pytest.raises((CredentialsError, DataError), match=message):
        kaggle_submit.submit(sub, "comp", "m", raw, api=FailingApi(exc))
    assert SECRET not in err + caplog.text and not out.exists()
    written = [p for p in tmp_path.rglob("*") if p.is_file() and home not in p.parents]
    assert len(written) > len(IMGS) and all(SECRET.encode() not in p.read_bytes() for p in written)


def test_download_failure_hides_every_secret_form(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    FORMS["kaggle auth login (credentials.json)"](home, monkeypatch)

    class Api:
        def competition_download_file(self, competition, name, path, force, quiet):
            raise ConnectionError(f"refresh {SECRET} and access {SECRET}x failed")

    with caplog.at_level(logging.DEBUG), pytest.raises(CredentialsError, match="network error while downloading") \
            as info:
        kaggle_source.download("comp", tmp_path / "raw", hq=False, include_test=False, api=Api())
    assert SECRET not in str(info.value) + caplog.text


def test_a_full_disk_during_download_is_not_called_a_network_error(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    import errno

    from carvana_seg.pipeline.errors import WriteError

    FORMS["KAGGLE_USERNAME and KAGGLE_KEY"](home, monkeypatch)

    class Api:
        def competition_download_file(self, competition, name, path, force, quiet):
            raise OSError(errno.ENOSPC, "No space left on device", f"{path}/{name}")

    with pytest.raises(WriteError, match=r"cannot write .*\.download/train.zip: No space left on device"):
        kaggle_source.download("comp", tmp_path / "raw", hq=False, include_test=False, api=Api())
