"""Offline install onto an existing torch: ``wheelhouse.plan`` keeps what a target lacks, and
``make env TORCH=system WHEELHOUSE=...`` builds a venv over the target's packages from a wheelhouse alone.

The "target image" is this environment's site-packages without three packages (tqdm, kaggle and the project);
its wheelhouse is built from local files only (wheels re-packed from the installed pure-Python packages), and pip
gets a dead index URL and no config, so nothing can come from the network.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from carvana_seg.pipeline import wheelhouse
from carvana_seg.pipeline.errors import ConfigError
from tests.helpers import ROOT

SITE = Path(metadata.distribution("numpy").locate_file(""))
REMOVED = ("tqdm", "kaggle")  # pure Python, and not in the base interpreter's own site-packages


def test_plan_keeps_only_what_the_target_lacks():
    reqs = [Requirement("tqdm>=4.66"), Requirement("jsonschema>=4"), Requirement("torch>=2.4")]
    everything = wheelhouse.plan(reqs)
    assert "torch" not in everything and {"tqdm", "jsonschema", "referencing", "attrs"} <= set(everything)
    freeze = {n: Version(v) for n, v in everything.items()}
    assert wheelhouse.plan(reqs, freeze) == {}
    freeze["tqdm"] = Version("4.0")  # installed, but outside pyproject's range
    del freeze["jsonschema"]
    assert wheelhouse.plan(reqs, freeze) == {"jsonschema": everything["jsonschema"], "tqdm": everything["tqdm"]}
    assert "torch" in wheelhouse.plan(reqs, {}, exclude=())  # --exclude nothing: torch too


def test_freeze_and_pyproject_errors_name_the_file(tmp_path):
    bad = tmp_path / "freeze.txt"
    bad.write_text("-e git+https://x#egg=y\nnumpy==2.4.6\nfoo==not a version\n")
    with pytest.raises(ConfigError, match=r"freeze.txt, line 3"):
        wheelhouse.read_freeze(bad)
    with pytest.raises(ConfigError, match="cannot read it"):
        wheelhouse.read_freeze(tmp_path / "missing.txt")
    with pytest.raises(ConfigError, match=r"no optional-dependencies group\(s\) \['gpu'\]"):
        wheelhouse.project_requirements(ROOT / "pyproject.toml", ("gpu",))


def _repack(name: str, dest: Path) -> Path:
    """A py3-none-any wheel of an installed pure-Python distribution, from its installed files."""
    dist = metadata.distribution(name)
    path = dest / f"{dist.metadata['Name'].replace('-', '_')}-{dist.version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as whl:
        for f in dist.files or []:
            if f.parts[0] == ".." or "__pycache__" in f.parts or f.name in ("RECORD", "INSTALLER", "direct_url.json"):
                continue
            whl.write(dist.locate_file(f), str(f))
        info = next(f for f in dist.files if f.name == "METADATA").parent
        whl.writestr(f"{info}/RECORD", "")
    return path


def _target_image(root: Path) -> Path:
    """This environment's site-packages as symlinks, minus REMOVED and the project (a GPU image with torch)."""
    drop = {*(n.lower() for n in REMOVED), "carvana_seg"}
    image = root / "image"
    image.mkdir()
    for entry in SITE.iterdir():
        name = entry.name.lower()
        gone = name.split("-")[0] in drop or name.startswith("__editable__")  # module dir or <name>-<v>.dist-info
        if not gone and entry.suffix != ".pth":
            (image / entry.name).symlink_to(entry)
    return image


@pytest.mark.slow
def test_make_env_torch_system_installs_from_the_wheelhouse_with_the_index_disabled(tmp_path):
    image = _target_image(tmp_path)
    freeze = tmp_path / "freeze.txt"
    freeze.write_text(
        "".join(f"{d.metadata['Name']}=={d.version}\n" for d in metadata.distributions(path=[str(image)]))
    )
    wanted = wheelhouse.wanted(ROOT / "pyproject.toml", wheelhouse.read_freeze(freeze))
    assert set(wanted) == {*REMOVED, "setuptools"}  # the rest, torch included, is the target's; pip builds with
    # the wheelhouse's setuptools (build isolation), whatever the target has
    wh = tmp_path / "wheelhouse"
    wh.mkdir()
    for name in wanted:
        _repack(name, wh)
    (wh / "requirements.txt").write_text("".join(f"{n}=={v}\n" for n, v in wanted.items()))

    venv = tmp_path / "venv"
    base = Path(sys.base_prefix) / "bin" / "python3"
    subprocess.run([str(base), "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "target_image.pth").write_text(f"{image}\n")  # the machine's own packages: torch, numpy, ...
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV"))}
    env.update(
        PIP_CONFIG_FILE=os.devnull,
        PIP_INDEX_URL="http://127.0.0.1:9/simple",
        PIP_NO_CACHE_DIR="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )
    res = subprocess.run(
        ["make", "-C", str(ROOT), "env", "TORCH=system", f"WHEELHOUSE={wh}", f"VENV={venv}"],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "system torch" in res.stdout
    probe = (
        "import importlib.util as u; "  # kaggle authenticates when imported: locate it only
        "print(*(u.find_spec(m).origin for m in ('kaggle', 'tqdm', 'torch', 'carvana_seg')), sep='\\n')"
    )
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0].startswith(str(site)) and out[1].startswith(str(site))  # from the wheelhouse
    assert out[2].startswith(str(image))  # the machine's torch, untouched
    assert out[3].startswith(str(ROOT / "src"))  # the project, editable
    assert (
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "carvana_seg", "--help"],
            env=env,
            check=False,
            capture_output=True,
            timeout=120,
        ).returncode
        == 0
    )
