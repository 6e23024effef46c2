"""GPU claiming on a multi-GPU box, with fake devices: distinct devices, release on SIGKILL, scheduler respected."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from carvana_seg.pipeline import gpu
from carvana_seg.pipeline.errors import CarvanaSegError
from tests.helpers import ROOT

# Claims a device, prints "<index> <CUDA_VISIBLE_DEVICES>", then holds the claim until its stdin closes.
HOLDER = (
    "import os, sys\n"
    "from carvana_seg.pipeline import gpu\n"
    "d = gpu.claim_device(timeout=float(sys.argv[1]), poll=0.05)\n"
    "print(d, os.environ.get('CUDA_VISIBLE_DEVICES'), flush=True)\n"
    "sys.stdin.read()\n"
)


def _env(lock_dir: Path, n_gpus: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env.update(
        CARVANA_SEG_FAKE_GPUS=str(n_gpus), CARVANA_SEG_GPU_LOCK_DIR=str(lock_dir), PYTHONPATH=str(ROOT / "src"), **extra
    )
    return env


def _holder(env: dict[str, str], timeout: float = 5.0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(timeout)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _claimed(proc: subprocess.Popen) -> tuple[str, str]:
    line = proc.stdout.readline().split()
    assert line, proc.stderr.read()
    return line[0], line[1]


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.stdin.close()
            p.wait(timeout=10)


def test_parallel_jobs_claim_distinct_devices(tmp_path):
    env = _env(tmp_path / "locks", 3)
    procs = [_holder(env) for _ in range(3)]
    try:
        got = [_claimed(p) for p in procs]
        assert sorted(d for d, _ in got) == ["0", "1", "2"]
        assert all(d == visible for d, visible in got)  # each job sees only its own device
        extra = subprocess.run(
            [sys.executable, "-c", HOLDER, "0.3"], env=env, input="", capture_output=True, text=True, timeout=30
        )
        assert extra.returncode != 0
        assert "all 3 GPUs are claimed" in extra.stderr and "--resources gpu=N" in extra.stderr
    finally:
        _stop(procs)


def test_sigkilled_job_releases_its_device(tmp_path):
    env = _env(tmp_path / "locks", 2)
    procs = [_holder(env) for _ in range(2)]
    try:
        devices = {_claimed(p)[0]: p for p in procs}
        victim = devices["1"]
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        assert (tmp_path / "locks" / "gpu1.lock").exists()  # the file stays; only a held lock counts
        newcomer = _holder(env)
        procs.append(newcomer)
        assert _claimed(newcomer)[0] == "1"
    finally:
        _stop(procs)


def test_waiting_job_gets_a_device_when_one_is_released(tmp_path):
    env = _env(tmp_path / "locks", 1)
    first = _holder(env)
    try:
        assert _claimed(first)[0] == "0"
        second = _holder(env, timeout=20)
        time.sleep(0.5)
        assert second.poll() is None  # still waiting
        _stop([first])
        assert _claimed(second)[0] == "0"
        _stop([second])
        assert "all 1 GPUs are busy" in second.stderr.read()
    finally:
        _stop([first])


def _fake_nvidia_smi(bin_dir: Path, n: int) -> str:
    """A fake ``nvidia-smi`` listing ``n`` GPUs for ``-L``; returns a PATH with it first."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    lines = "".join(f"echo 'GPU {i}: NVIDIA Fake (UUID: GPU-fake-{i})'\n" for i in range(n))
    exe = bin_dir / "nvidia-smi"
    exe.write_text(f'#!/bin/sh\n[ "$1" = -L ] || exit 9\n{lines}')
    exe.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


def test_jobs_claim_distinct_devices_within_an_inherited_visible_set(tmp_path):
    """8 GPUs (fake nvidia-smi), CUDA_VISIBLE_DEVICES=4,5,6,7 inherited: 4 jobs get 4, 5, 6 and 7, one each, in
    PCI bus order; a fifth waits, as the claim is no longer switched off by the inherited set."""
    env = _env(tmp_path / "locks", 0, PATH=_fake_nvidia_smi(tmp_path / "bin", 8), CUDA_VISIBLE_DEVICES="4,5,6,7")
    env.pop("CARVANA_SEG_FAKE_GPUS")
    check = "import os; from carvana_seg.pipeline import gpu; print(gpu.count_devices())"
    assert (
        subprocess.run(
            [sys.executable, "-c", check], check=False, env=env, capture_output=True, text=True
        ).stdout.strip()
        == "8"
    )
    probe = HOLDER.replace("flush=True)", "os.environ.get('CUDA_DEVICE_ORDER'), flush=True)")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", probe, "5"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        got = [p.stdout.readline().split() for p in procs]
        assert sorted(g[0] for g in got) == ["4", "5", "6", "7"], [p.stderr.read() for p in procs]
        assert all(g[1] == g[0] and g[2] == "PCI_BUS_ID" for g in got)
        assert sorted(f.name for f in (tmp_path / "locks").iterdir()) == [f"gpu{i}.lock" for i in (4, 5, 6, 7)]
        extra = subprocess.run(
            [sys.executable, "-c", HOLDER, "0.3"],
            check=False,
            env=env,
            input="",
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert extra.returncode != 0 and "all 4 GPUs are claimed" in extra.stderr
        assert "CUDA_VISIBLE_DEVICES='4,5,6,7'" in extra.stderr
    finally:
        _stop(procs)


def test_visible_set_entries_are_cut_at_the_first_invalid_one(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-aa, 2,-1,3")
    assert gpu.visible_set() == ["GPU-aa", "2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu.visible_set() == [] and gpu.candidates(4) == ([], "CUDA_VISIBLE_DEVICES=''")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert gpu.visible_set() is None and gpu.candidates(2)[0] == ["0", "1"]


def test_scheduler_assigned_devices_are_respected(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu, "_HELD", {})
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "FASTEST_FIRST")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert gpu.claim_device(n_devices=4, lock_dir=tmp_path / "locks") is None
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3" and os.environ["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert not (tmp_path / "locks").exists()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no device at all: nothing to claim either
    assert gpu.claim_device(n_devices=4, lock_dir=tmp_path / "locks") is None and not (tmp_path / "locks").exists()


def test_no_gpu_claims_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu, "_HELD", {})
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("CARVANA_SEG_FAKE_GPUS", "0")
    assert gpu.count_devices() == 0
    assert gpu.claim_device(lock_dir=tmp_path / "locks") is None
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    monkeypatch.setenv("CARVANA_SEG_FAKE_GPUS", "two")
    with pytest.raises(CarvanaSegError, match="CARVANA_SEG_FAKE_GPUS"):
        gpu.count_devices()


def test_cli_claims_a_device_for_gpu_stages_only(tmp_path, monkeypatch, capsys):
    from carvana_seg.pipeline import cli

    held: dict[str, int] = {}
    monkeypatch.setattr(gpu, "_HELD", held)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # recorded first, so teardown removes what the claim sets
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "")  # the same for what the claim sets
    monkeypatch.delenv("CUDA_DEVICE_ORDER")
    monkeypatch.setenv("CARVANA_SEG_FAKE_GPUS", "2")
    monkeypatch.setenv("CARVANA_SEG_GPU_LOCK_DIR", str(tmp_path / "locks"))
    assert cli.main(["folds", "--configfile", str(tmp_path / "missing.yaml"), "--raw", "r", "--out", "o"]) == 2
    assert "device" not in held and "CUDA_VISIBLE_DEVICES" not in os.environ  # not a GPU stage
    try:
        code = cli.main(["predict", str(tmp_path / "missing.jpg"), "--models", str(tmp_path), "--out", str(tmp_path)])
        assert code == 2 and "missing.jpg" in capsys.readouterr().err
        assert held["device"] == 0 and os.environ["CUDA_VISIBLE_DEVICES"] == "0"
        assert not gpu.wants_gpu(["predict", "x.jpg", "--device", "cpu"]) and not gpu.wants_gpu(["train", "-h"])
        assert gpu.wants_gpu(["predict", "x.jpg", "--device", "auto"])
    finally:
        if "fd" in held:
            os.close(held["fd"])


FOUR_JOBS = """
rule all:
    input: expand("claims/{i}.txt", i=range(4))

rule model_job:
    output: "claims/{i}.txt"
    resources: gpu=1
    shell: "{python} barrier.py {output}"
"""
# claims a device, records "<device> <CUDA_VISIBLE_DEVICES>", then waits until all four jobs hold one (a barrier:
# it only passes if the four run at once)
BARRIER = (
    "import os, sys, time, glob\n"
    "from carvana_seg.pipeline import gpu\n"
    "d = gpu.claim_device(timeout=5, poll=0.05)\n"
    "open(sys.argv[1] + '.tmp', 'w').write(f\"{d} {os.environ['CUDA_VISIBLE_DEVICES']}\\n\")\n"
    "deadline = time.time() + 60\n"
    "while len(glob.glob('claims/*.tmp')) + len(glob.glob('claims/*.txt')) < 4 and time.time() < deadline:\n"
    "    time.sleep(0.1)\n"
    "os.rename(sys.argv[1] + '.tmp', sys.argv[1])\n"
)


@pytest.mark.dag
def test_snakemake_resources_gpu_4_runs_four_model_jobs_at_once_one_gpu_each(tmp_path):
    """`snakemake --resources gpu=4` on a 4-GPU box (fake nvidia-smi) inside CUDA_VISIBLE_DEVICES=0,1,2,3: four jobs
    at once, each on its own device."""
    env = _env(tmp_path / "locks", 0, PATH=_fake_nvidia_smi(tmp_path / "bin", 4), CUDA_VISIBLE_DEVICES="0,1,2,3")
    env.pop("CARVANA_SEG_FAKE_GPUS")
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(FOUR_JOBS.replace("{python}", sys.executable))
    (tmp_path / "barrier.py").write_text(BARRIER)
    res = subprocess.run(
        check=False,
        args=[
            str(Path(sys.executable).with_name("snakemake")),
            "--cores",
            "4",
            "--resources",
            "gpu=4",
            "-s",
            str(snakefile),
            "-d",
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    claims = sorted((tmp_path / "claims" / f"{i}.txt").read_text().split()[0] for i in range(4))
    assert claims == ["0", "1", "2", "3"]
