"""The ``fetch`` stage and its sources: local (directories or zips), Kaggle (with a fake API), synthetic dispatch."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest

import carvana_seg.data
from carvana_seg.data import kaggle_source
from carvana_seg.data.fetch import fetch_raw
from carvana_seg.data.kaggle_source import NO_CREDENTIALS, download
from carvana_seg.data.local_source import link_local
from carvana_seg.data.validate import validate_raw
from carvana_seg.pipeline.errors import CredentialsError, DataError
from carvana_seg.settings.data import Data, Synthetic
from tests.helpers import ROOT as REPO
from tests.helpers import make_raw, settings

SECRET = "s3cr3t-kaggle-key-0123456789"
PARTS = {"train": "train", "train_masks": "train_masks", "test": "test"}
CSVS = ("train_masks.csv", "metadata.csv", "sample_submission.csv")


def make_zips(layout: Path, out: Path, hq: bool = False) -> dict[str, Path]:
    """The Kaggle competition zips of ``layout`` (``train_hq.zip`` holds ``train_hq/``, as on Kaggle)."""
    out.mkdir(parents=True, exist_ok=True)
    zips = {}
    for part in PARTS:
        arc = f"{part}_hq" if hq and part != "train_masks" else part
        zips[f"{arc}.zip"] = out / f"{arc}.zip"
        with zipfile.ZipFile(out / f"{arc}.zip", "w") as zf:
            for f in sorted((layout / part).iterdir()):
                zf.write(f, f"{arc}/{f.name}")
    for csv in CSVS:
        zips[f"{csv}.zip"] = out / f"{csv}.zip"
        with zipfile.ZipFile(out / f"{csv}.zip", "w") as zf:
            zf.write(layout / csv, csv)
    return zips


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    return make_raw(tmp_path / "kaggle-copy")


@pytest.fixture
def no_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture
def credentials(no_credentials: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", SECRET)


# --- local ---------------------------------------------------------------------------------------------------


def test_local_directories_are_symlinked(layout: Path, tmp_path: Path) -> None:
    dest = tmp_path / "raw"
    link_local(layout, dest)
    for part in ("train", "train_masks", "test", *CSVS):
        assert (dest / part).is_symlink() and (dest / part).resolve() == (layout / part).resolve()
    assert validate_raw(dest, quick=True)["n_train"] == 32


@pytest.mark.parametrize("hq", [False, True])
def test_local_zips_are_extracted(layout: Path, tmp_path: Path, hq: bool) -> None:
    zips = make_zips(layout, tmp_path / "zips", hq=hq)
    dest = tmp_path / "raw"
    link_local(zips["train_masks.zip"].parent, dest, hq=hq)
    assert not (dest / "train").is_symlink() and not (dest / "train_hq").exists()
    assert sorted(os.listdir(dest)) == sorted(["train", "train_masks", "test", *CSVS])
    assert validate_raw(dest)["n_test"] == 16


def test_local_missing_parts(layout: Path, tmp_path: Path) -> None:
    shutil.rmtree(layout / "test")
    (layout / "sample_submission.csv").unlink()
    (layout / "metadata.csv").unlink()  # optional: not reported
    with pytest.raises(DataError, match=r"missing test/ \(or test.zip\), sample_submission.csv") as info:
        link_local(layout, tmp_path / "raw")
    assert "metadata" not in str(info.value)
    with pytest.raises(DataError, match="local data directory not found"):
        link_local(tmp_path / "nowhere", tmp_path / "raw")


def test_fetch_local_atomic(layout: Path, tmp_path: Path) -> None:
    out = tmp_path / "data" / "run" / "raw"
    data = settings(Data, source="local", path=str(layout), hq=False)
    assert fetch_raw(data, out)["n_train"] == 32
    assert fetch_raw(data, out)["n_train"] == 32  # a rerun replaces the old links
    assert sorted(os.listdir(out.parent)) == ["raw"]
    assert len(list((layout / "train").iterdir())) == 32  # replacing the links never touched the source
    mask = sorted((layout / "train_masks").iterdir())[1]
    saved = mask.read_bytes()
    mask.unlink()
    shutil.rmtree(out)
    with pytest.raises(DataError, match=mask.name) as info:
        fetch_raw(data, out)
    assert os.listdir(out.parent) == [] and len(list((layout / "train").iterdir())) == 32
    assert ".partial" not in str(info.value) and str(layout / "train") in str(info.value)  # the user's own file
    # a killed fetch's staging directory is swept by the next fetch (its pid is gone)
    stale = out.parent / ".raw.partial-999999999"
    (stale / "train").mkdir(parents=True)
    mask.write_bytes(saved)
    assert fetch_raw(data, out)["n_train"] == 32
    assert sorted(os.listdir(out.parent)) == ["raw"]


def test_fetch_cli_local(layout: Path, tmp_path: Path) -> None:
    out = tmp_path / "data" / "raw"
    cfg = json.dumps({"name": "t", "data": {"source": "local", "path": str(layout), "hq": False}})
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    manifest = tmp_path / "data" / "fetch.json"
    cmd = [sys.executable, "-m", "carvana_seg", "fetch", "--cfg", cfg, "--out", str(out), "--threads", "1",
           "--manifest", str(manifest)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (out / "train").is_symlink()
    assert json.loads(manifest.read_text())["summary"]["n_train"] == 32
    cfg = json.dumps({"name": "t", "data": {"source": "local", "path": str(tmp_path / "nowhere")}})
    proc = subprocess.run(cmd[:5] + [cfg] + cmd[6:], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("error:") == 1 and "nowhere" in proc.stderr
    assert not manifest.exists()  # a failed fetch removes the stale manifest


# --- synthetic -----------------------------------------------------------------------------------------------


def test_fetch_synthetic_dispatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def generate(root: Path, **kwargs: object) -> None:
        calls.append((root, kwargs))
        make_raw(Path(root) / "raw")

    fake = types.ModuleType("carvana_seg.data.synthetic")
    fake.generate = generate
    monkeypatch.setitem(sys.modules, "carvana_seg.data.synthetic", fake)
    monkeypatch.setattr(carvana_seg.data, "synthetic", fake, raising=False)
    params = {"n_train_cars": 2, "n_test_cars": 1, "n_outlier_cars": 0, "width": 64, "height": 48,
              "jpeg_quality": 90, "seed": 3}
    out = tmp_path / "demo" / "raw"
    data = settings(Data, source="synthetic", synthetic=settings(Synthetic, **params))
    assert fetch_raw(data, out, threads=2)["n_cars_train"] == 2
    assert calls == [(out.parent, {**params, "workers": 2})]


# --- kaggle --------------------------------------------------------------------------------------------------


class FakeApi:
    """Stands in for KaggleApi: 'downloads' by copying prepared zips; can corrupt or fail chosen files."""

    def __init__(self, zips: dict[str, Path], corrupt: dict[str, int] | None = None,
                 fail: dict[str, BaseException] | None = None) -> None:
        self.zips, self.corrupt, self.fail = zips, dict(corrupt or {}), dict(fail or {})
        self.calls: list[str] = []

    def competition_download_file(self, competition: str, file_name: str, path: str, force: bool = False,
                                  quiet: bool = False) -> None:
        assert competition == "carvana-image-masking-challenge"
        self.calls.append(file_name)
        if file_name in self.fail:
            raise self.fail[file_name]
        target = Path(path) / file_name
        if self.corrupt.get(file_name, 0) > 0:
            self.corrupt[file_name] -= 1
            target.write_bytes(self.zips[file_name].read_bytes()[:200])
        else:
            shutil.copyfile(self.zips[file_name], target)


def _all_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())


def test_kaggle_without_credentials(no_credentials: Path, tmp_path: Path) -> None:
    dest = tmp_path / "raw"
    with pytest.raises(CredentialsError) as info:
        download("carvana-image-masking-challenge", dest, hq=False, include_test=True)
    assert str(info.value) == NO_CREDENTIALS and not dest.exists()
    out = tmp_path / "data" / "raw"
    with pytest.raises(CredentialsError):
        fetch_raw(settings(Data, source="kaggle", competition="c", hq=False, include_test=True), out)
    assert os.listdir(out.parent) == []


def test_kaggle_credential_files(no_credentials: Path) -> None:
    token = no_credentials / ".kaggle" / "kaggle.json"
    token.parent.mkdir()
    token.write_text(json.dumps({"username": "someone", "key": SECRET}))
    assert kaggle_source.check_credentials() == str(token)
    token.write_text("{not json " + SECRET)
    with pytest.raises(CredentialsError, match="unreadable Kaggle token file") as info:
        kaggle_source.check_credentials()
    assert SECRET not in str(info.value)


def test_kaggle_download_layout_and_resume(credentials: None, layout: Path, tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    zips = make_zips(layout, tmp_path / "zips")
    dest = tmp_path / "raw"
    api = FakeApi(zips, corrupt={"train_masks.zip": 1}, fail={"test.zip": ConnectionError("connection reset")})
    with caplog.at_level(logging.DEBUG), pytest.raises(CredentialsError, match="network error .*test.zip"):
        download("carvana-image-masking-challenge", dest, hq=False, include_test=True, api=api)
    assert api.calls == ["train.zip", "train_masks.zip", "train_masks.zip", "train_masks.csv.zip", "test.zip"]
    api.fail.clear()
    api.calls.clear()
    with caplog.at_level(logging.DEBUG):
        download("carvana-image-masking-challenge", dest, hq=False, include_test=True, api=api)
    assert api.calls == ["test.zip", "metadata.csv.zip", "sample_submission.csv.zip"]  # verified ones skipped
    assert validate_raw(dest)["n_train"] == 32
    assert sorted(p.name for p in (dest / ".download").iterdir() if p.suffix == ".zip") == []  # archives removed
    api.calls.clear()
    download("carvana-image-masking-challenge", dest, hq=False, include_test=True, api=api)
    assert api.calls == []
    assert SECRET.encode() not in _all_bytes(dest) and SECRET not in caplog.text


def test_kaggle_corrupt_archive_rejected(credentials: None, layout: Path, tmp_path: Path) -> None:
    api = FakeApi(make_zips(layout, tmp_path / "zips"), corrupt={"train.zip": 2})
    with pytest.raises(DataError, match=r"train.zip: downloaded archive is unusable .* even after"):
        download("carvana-image-masking-challenge", tmp_path / "raw", hq=False, include_test=False, api=api)
    assert api.calls == ["train.zip", "train.zip"] and not (tmp_path / "raw" / ".download" / "train.zip").exists()


def test_kaggle_auth_error_hides_key(credentials: None, layout: Path, tmp_path: Path,
                                     caplog: pytest.LogCaptureFixture) -> None:
    error = RuntimeError(f"401 Unauthorized (key={SECRET})")
    error.response = types.SimpleNamespace(status_code=401)
    api = FakeApi(make_zips(layout, tmp_path / "zips"), fail={"train_hq.zip": error})
    with caplog.at_level(logging.DEBUG), pytest.raises(CredentialsError, match="HTTP 401") as info:
        download("carvana-image-masking-challenge", tmp_path / "raw", hq=True, include_test=True, api=api)
    assert api.calls == ["train_hq.zip"]
    assert SECRET not in str(info.value) and SECRET not in caplog.text
    assert SECRET.encode() not in _all_bytes(tmp_path / "raw")


def test_fetch_kaggle_staging(credentials: None, layout: Path, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    api = FakeApi(make_zips(layout, tmp_path / "zips"), fail={"metadata.csv.zip": ConnectionError("offline")})
    monkeypatch.setattr(kaggle_source, "make_api", lambda: api)
    out = tmp_path / "data" / "raw"
    data = settings(Data, source="kaggle", competition="carvana-image-masking-challenge", hq=False, include_test=True)
    with pytest.raises(CredentialsError, match="offline"):
        fetch_raw(data, out)
    assert not out.exists() and (out.parent / ".raw.kaggle-partial" / ".download" / "train.zip.ok").exists()
    api.fail.clear()
    api.calls.clear()
    assert fetch_raw(data, out)["n_test"] == 16
    assert api.calls == ["metadata.csv.zip", "sample_submission.csv.zip"]
    assert os.listdir(out.parent) == ["raw"] and not (out / ".download").exists()
    assert sorted(os.listdir(out)) == sorted(["train", "train_masks", "test", *CSVS])
