"""The fault matrix: every long stage killed with SIGKILL mid-way, then rerun, gives what an uninterrupted run gave;
a full or read-only disk ends in one line naming the final output, with nothing left behind.

One tiny synthetic run (Snakemake, 11 jobs) is the uninterrupted reference; each case then reruns one stage's own
command (as Snakemake ran it, log redirect included) with ``CARVANA_SEG_KILL_AT`` set, so that the stage kills
itself with SIGKILL at a chosen write (``staging._fault_point``: the temporary complete, the rename not done),
checks that no final output appeared, reruns the same command and compares with the reference. The outlier
stage's zoom needs a car far smaller than the training cars, which a tiny trained model does not produce: that case
runs on tests/outliers/test_outliers.py's fabricated ensemble output instead. The disk cases mount a small tmpfs (root
only; skipped with the reason otherwise).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from tests.cluster import tiny_dag

pytestmark = [pytest.mark.slow, pytest.mark.dag]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TARGETS = ["results/fm/submission_round1.csv.gz", "data/fm/pseudo/round2/train_masks.csv"]
# the cluster tests' tiny DAG (every rule group, an outlier car, a pseudo-labelling round) with 32x32, 2-epoch models
CONFIG = {
    **tiny_dag.CONFIG,
    "name": "fm",
    "variants": [dict(tiny_dag.CONFIG["variants"][0], width=32, height=32, epochs=2)],
}
TEMP = re.compile(r"\.(tmp|old|partial)-\d+$")


def _env(**extra: str) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **extra}


def _snakemake(work: Path, *args: str) -> str:
    res = subprocess.run(
        [
            str(BIN / "snakemake"),
            *args,
            "--configfile",
            str(work / "c.yaml"),
            "-s",
            str(ROOT / "Snakefile"),
            "-d",
            str(work),
            *TARGETS,
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=600,
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    return res.stdout + res.stderr


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if TEMP.search(p.name)]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The finished reference run and {rule: shell command} (fold 0's for train and oof)."""
    work = tmp_path_factory.mktemp("fm")
    (work / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    _snakemake(work, "--cores", "2")
    dry = _snakemake(work, "-n", "-p", "-F", "--cores", "2")  # the same --threads as the run
    commands = {}
    for rule, cmd in re.findall(r"^(?:local)?rule (\w+):.*?^Shell command: (.*?)$", dry, re.S | re.M):
        commands.setdefault(rule, cmd)
    assert {"resize_cache", "train", "oof", "ensemble", "pseudo_labels", "submission"} <= set(commands)
    assert not temporaries(work)
    return work, commands


def _stage(work: Path, command: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = _env(**({"CARVANA_SEG_KILL_AT": kill_at} if kill_at else {}))
    return subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True, timeout=300)


def _kill_and_rerun(work: Path, command: str, kill_at: str, outputs: list[str], also_remove: list[str] = ()) -> None:
    """Remove ``outputs``, run the command until it kills itself at ``kill_at``, check nothing final appeared and a
    temporary did, then rerun it to completion and check every temporary is gone."""
    for p in [*outputs, *also_remove]:
        path = work / p
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
    killed = _stage(work, command, kill_at)
    assert killed.returncode in (137, -9), (killed.returncode, killed.stderr[-2000:])
    assert not [p for p in outputs if (work / p).exists()], "a killed stage left an output that looks finished"
    assert temporaries(work), "the kill came too late: no temporary was left to sweep"
    done = _stage(work, command)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not temporaries(work), temporaries(work)


def _save(work: Path, paths: list[str], dest: Path) -> None:
    for p in paths:
        (dest / p).parent.mkdir(parents=True, exist_ok=True)
        if (work / p).is_dir():
            shutil.copytree(work / p, dest / p, symlinks=True)
        else:
            shutil.copy2(work / p, dest / p, follow_symlinks=False)


def _same_npz(a: Path, b: Path) -> None:
    with np.load(a) as x, np.load(b) as y:
        assert sorted(x.files) == sorted(y.files)
        for k in x.files:
            np.testing.assert_array_equal(x[k], y[k], err_msg=f"{a}:{k}")


def test_resize_killed_then_rerun_builds_the_same_cache(run, tmp_path):
    work, commands = run
    cache = "data/fm/cache/32x32"
    _save(work, [cache], tmp_path)
    _kill_and_rerun(work, commands["resize_cache"], "32x32", [cache])
    for name in ("images.npy", "masks.npy", "ids.txt", "meta.json"):
        assert (work / cache / name).read_bytes() == (tmp_path / cache / name).read_bytes(), name


def test_train_killed_in_epoch_2_resumes_to_the_same_model_and_keeps_the_log(run, tmp_path):
    work, commands = run
    model, metrics, state = (
        "results/fm/models/v/fold0/best.pt",
        "results/fm/models/v/fold0/metrics.csv",
        "results/fm/state/v/fold0",
    )
    _save(work, [model, metrics], tmp_path)
    # killed while the epoch-2 state is written: epoch 1's state is on disk, epoch 2's only as a temporary
    _kill_and_rerun(work, commands["train"], "last.pt:2", [model, metrics], also_remove=[state])
    a, b = torch.load(work / model, weights_only=True), torch.load(tmp_path / model, weights_only=True)
    assert a["epoch"] == b["epoch"] and a["val_dice"] == b["val_dice"]
    for k in b["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    timing = ["seconds", "images_per_s", "data_share"]
    pd.testing.assert_frame_equal(
        pd.read_csv(work / metrics).drop(columns=timing), pd.read_csv(tmp_path / metrics).drop(columns=timing)
    )
    log = (work / "results/fm/logs/train/v_fold0.log").read_text()  # Snakemake's `> {log}`, truncated on rerun
    earlier, _, resumed = log.partition("--- resumed run ---")
    assert "epoch 1/2:" in earlier and "resuming from epoch 2" in resumed and "epoch 2/2:" in resumed


def test_oof_killed_then_rerun_writes_the_same_predictions(run, tmp_path):
    work, commands = run
    outs = ["results/fm/oof/v/fold0.npz", "results/fm/oof/v/fold0_dice.csv"]
    _save(work, outs, tmp_path)
    _kill_and_rerun(work, commands["oof"], "fold0.npz", outs)
    _same_npz(work / outs[0], tmp_path / outs[0])
    assert (work / outs[1]).read_bytes() == (tmp_path / outs[1]).read_bytes()


def test_ensemble_killed_at_the_second_shard_resumes_from_it(run, tmp_path):
    work, commands = run
    shards = [f"results/fm/test_probs/{k}_{i:05d}.npz" for k in ("shard", "variants") for i in (0, 1)]
    manifest = "results/fm/test_probs.json"
    _save(work, [*shards, manifest], tmp_path)
    _kill_and_rerun(work, commands["ensemble"], "shard_00001.npz", [manifest], also_remove=shards)
    assert "1 to compute" in (work / "results/fm/logs/ensemble.log").read_text()  # shard 0 was kept
    for s in shards:
        _same_npz(work / s, tmp_path / s)
    a, b = (json.loads((d / manifest).read_text()) for d in (work, tmp_path))
    for key in ("shards", "n_images", "hash", "models", "variant_masks"):
        assert a[key] == b[key], key


def test_pseudo_labels_killed_mid_way_then_rerun_write_the_same_layout(run, tmp_path):
    work, commands = run
    layout, table, summary = (
        "data/fm/pseudo/round2",
        "results/fm/round2/pseudo_labels.csv",
        "results/fm/round2/pseudo_labels.json",
    )
    _save(work, [layout, table, summary], tmp_path)
    _kill_and_rerun(work, commands["pseudo_labels"], "*_mask.gif:3", [layout, table, summary])

    def listing(root: Path) -> list[Path]:  # Snakemake marks its directory outputs with .snakemake_timestamp
        return sorted(p.relative_to(root) for p in root.rglob("*") if p.name != ".snakemake_timestamp")

    files = listing(tmp_path / layout)
    assert files and listing(work / layout) == files
    for f in files:
        a, b = work / layout / f, tmp_path / layout / f
        if a.is_symlink():
            assert os.readlink(a) == os.readlink(b)
        elif a.is_file():
            assert a.read_bytes() == b.read_bytes(), f
    assert (work / table).read_bytes() == (tmp_path / table).read_bytes()


def test_submission_killed_then_rerun_writes_the_same_rows(run, tmp_path):
    work, commands = run
    sub = "results/fm/submission_round1.csv.gz"
    _save(work, [sub], tmp_path)
    _kill_and_rerun(work, commands["submission"], "submission_round1.csv.gz", [sub])
    assert gzip.decompress((work / sub).read_bytes()) == gzip.decompress((tmp_path / sub).read_bytes())


def test_outliers_with_zoom_killed_then_rerun_gives_the_same_fixes(tmp_path):
    from tests.helpers import MODEL_VARIANTS as VARIANTS
    from tests.helpers import fabricate_outliers as fabricate
    from tests.helpers import make_models, outlier_cfg

    data = fabricate(tmp_path)
    models = make_models(tmp_path, folds=1)
    cfg = dict(outlier_cfg(), variants=VARIANTS)
    outs = ["outliers.csv", "scores.csv", "fixes.csv", "outliers/sheets.json"]
    command = " ".join(
        [
            "python -m carvana_seg outliers --cfg",
            f"'{json.dumps(cfg)}'",
            "--manifest test_probs.json",
            "--threshold threshold.json --folds folds.csv --raw",
            str(data["raw"]),
            "--out outliers.csv",
            "--scores scores.csv --fixes fixes.csv --sheets outliers/sheets.json --threads 1 --device cpu --models",
            *map(str, models),
        ]
    )
    assert _stage(tmp_path, command).returncode == 0
    reference = tmp_path / "reference"
    reference.mkdir()
    _save(tmp_path, outs, reference)
    assert "zoom+" in (reference / "outliers.csv").read_text()
    _kill_and_rerun(tmp_path, command, "zoom.npz", outs)  # the zoomed maps computed, nothing else written
    for p in outs:
        assert (tmp_path / p).read_bytes() == (reference / p).read_bytes(), p


# ---- full and read-only disks --------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 512 kB tmpfs at tmp_path/disk (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk)], capture_output=True, text=True
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    yield disk
    subprocess.run(["umount", str(disk)], check=False)


def _one_line_error(res: subprocess.CompletedProcess, final: str, cause: str) -> None:
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr[-2000:]
    assert lines[-1] == f"error: cannot write {final}: {cause}", lines[-3:]
    assert "Traceback" not in res.stderr


def test_train_on_a_full_disk_ends_in_one_line_and_leaves_no_checkpoint_temporary(run, small_disk):
    work, commands = run
    state = small_disk / "state"
    cmd = commands["train"].split(" > ")[0].replace("results/fm/state/v/fold0", str(state))
    cmd = cmd.replace("results/fm/models/v/fold0/", str(small_disk / "m") + "/")
    res = _stage(work, cmd)
    _one_line_error(res, str(state / "last.pt"), "No space left on device")
    assert not temporaries(small_disk) and not (state / "last.pt").exists()
    assert sorted(p.name for p in small_disk.rglob("*") if p.is_file()) == ["train.log"]  # the run's log only


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_submission_on_a_full_or_read_only_disk_ends_in_one_line_naming_the_output(run, small_disk, fault):
    work, commands = run
    out = small_disk / "sub" / "submission.csv.gz"
    if fault == "full":
        fd = os.open(small_disk / "filler", os.O_WRONLY | os.O_CREAT)
        with pytest.raises(OSError, match="No space left"):
            while True:
                os.write(fd, b"\0" * 4096)
        os.close(fd)
    else:
        out.parent.mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    cmd = commands["submission"].split(" > ")[0].replace("results/fm/submission_round1.csv.gz", str(out))
    res = _stage(work, cmd)
    _one_line_error(res, str(out), "No space left on device" if fault == "full" else "Read-only file system")
    assert not temporaries(small_disk) and not out.exists()
    files = sorted(p.name for p in small_disk.rglob("*") if p.is_file())
    assert files == (["filler"] if fault == "full" else [])  # (the output's folder may remain, empty)
