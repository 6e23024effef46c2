#!/usr/bin/env python
"""The first minutes on a GPU box (``make gpu-check``): environment, training and test-time rates, a tiny real DAG.

    python benchmarks/gpu_check.py [--out results/gpu-check] [--budget 450] [--toy [--jobs 2]]

Writes ``gpu_check.json`` and ``gpu_check.md`` (one table) into ``--out``:
- torch, CUDA, cuDNN, driver and GPU name;
- training images/s of the competition's variants (config/config.yaml: resnet34 U-Net at 1024x1024, 1344x896,
  1280x1280, their batch sizes, AdamW + one-cycle) for fp32/TF32, bf16, bf16 + channels_last and + compile
  (compile time apart), via the stage's own ``train_step``; peak GPU memory per size and the largest batch that fits;
- the test ensemble's images/s with flip-TTA, pipeline against model-only (``benchmarks/test_time.py``);
- a tiny real DAG through ``snakemake --resources gpu=1`` and what its train log says: the claimed GPU and bf16.

Every step runs in its own process with its own time cap, so a slow step (a long compile, a hang) costs only its
cap; a global ``--budget`` skips what no longer fits. No network: encoders start from random init. Without CUDA
(or with ``--toy``) every step runs at toy sizes on the CPU, which is how the test suite keeps this script alive.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
MODES = ["fp32/tf32", "bf16", "bf16+cl", "bf16+cl+compile"]
TOY_SIZES = [(64, 64), (96, 64), (80, 80)]  # the three shapes' roles (square, wide, larger square) at toy scale
# Per-step caps in seconds on a GPU (toy: CAP_TOY): the sum of what runs stays under 8 minutes with --budget.
CAPS = {"env": 60, "train": 45, "compile": 120, "memory": 60, "ensemble": 120, "dag": 180}
CAP_TOY = 240


def _child_env() -> dict:
    """No network for the steps: the hubs' offline switches (the encoders start from random init anyway)."""
    return dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")


def run_step(args: argparse.Namespace, name: str, *flags: str, cap: float, deadline: float) -> dict:
    """Run ``--step name flags`` in a fresh process under ``cap`` seconds; its last stdout line is its JSON."""
    left = deadline - time.monotonic()
    if left < min(cap, 20):
        return {"status": "skipped", "why": f"global budget: {max(left, 0):.0f} s left"}
    cmd = [sys.executable, __file__, "--step", name, *flags, *(["--toy"] if args.toy else [])]
    t0 = time.monotonic()
    try:
        res = subprocess.run(
            cmd, capture_output=True, text=True, timeout=min(cap, left), env=_child_env(), cwd=ROOT, check=False
        )
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "cap_s": round(min(cap, left)), "seconds": round(time.monotonic() - t0, 1)}
    lines = res.stdout.strip().splitlines()
    if res.returncode != 0 or not lines:
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        return {"status": "failed", "rc": res.returncode, "error": " | ".join(tail)[-400:]}
    out = json.loads(lines[-1])
    return {"status": "ok", "seconds": round(time.monotonic() - t0, 1), **out}


# ---- steps (each in its own process) ------------------------------------------------------------------------


def step_env(_args: argparse.Namespace) -> dict:
    import torch

    from carvana_seg.models import runtime

    names, driver = runtime.nvidia_smi()
    cuda = torch.cuda.is_available()
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "driver": driver,
        "gpu": torch.cuda.get_device_name(0) if cuda else (names[0] if names else None),
        "cuda_available": cuda,
        "bf16": bool(cuda and torch.cuda.is_bf16_supported()),
        "python": sys.version.split()[0],
    }


def _settings(variant: int, toy: bool):
    """(device, typed train settings, typed variant) of config/config.yaml's variant ``variant``, random init;
    toy: the same variant at a toy size and batch on the CPU."""
    import torch

    from carvana_seg.pipeline import config as cfgmod
    from carvana_seg.settings.build import build
    from carvana_seg.settings.train import Train
    from carvana_seg.settings.variants import Variant

    full = cfgmod.load(ROOT / "config" / "config.yaml")
    v = dict(full["variants"][variant], encoder_weights=None)
    if toy:
        v.update(width=TOY_SIZES[variant][0], height=TOY_SIZES[variant][1], batch_size=2)
    device = torch.device("cuda" if torch.cuda.is_available() and not toy else "cpu")
    return device, build(Train, full["train"]), build(Variant, v)


def _trainer(variant, tc, device, channels_last: bool, compile_model: bool, batch: int, steps: int):
    import torch

    from carvana_seg.models import model as modelmod
    from carvana_seg.models import runtime
    from carvana_seg.training import optim as optimmod
    from carvana_seg.training.losses import BceDiceLoss

    model = modelmod.build_model(variant.arch, variant.encoder, None, variant.name).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt, sched = optimmod.from_config(model, variant, tc, steps)
    x = torch.randint(0, 256, (batch, 3, variant.height, variant.width), dtype=torch.uint8)
    y = (torch.rand(batch, 1, variant.height, variant.width) > 0.5).to(torch.uint8) * 255
    return runtime.maybe_compile(model, compile_model), opt, sched, BceDiceLoss.from_config(tc.loss), x, y


def step_train(args: argparse.Namespace) -> dict:
    """Images/s of ``train_step`` (forward, loss, backward, AdamW, one-cycle) for one variant and mode."""
    import torch

    from carvana_seg.training.loop import train_step

    device, tc, v = _settings(args.variant, args.toy)
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = cuda  # as the stages set it
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    amp, cl, comp = args.mode != "fp32/tf32", "+cl" in args.mode, args.mode.endswith("compile")
    amp = amp and (cuda or args.toy)
    warm, steps = (1, 2) if args.toy else (3, args.steps)
    fwd, opt, sched, crit, x, y = _trainer(v, tc, device, cl, comp, args.batch or v.batch_size, warm + steps)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for i in range(warm + steps):
        if i == warm:
            if cuda:
                torch.cuda.synchronize()
            first, t1 = time.perf_counter() - t0, time.perf_counter()
        train_step(fwd, x, y, crit, opt, scaler, device, amp, cl)
        sched.after_step()
    if cuda:
        torch.cuda.synchronize()
    rate = steps * x.shape[0] / (time.perf_counter() - t1)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return {
        "size": f"{v.width}x{v.height}",
        "batch": int(x.shape[0]),
        "mode": args.mode,
        "images_per_s": round(rate, 2),
        "warmup_s": round(first, 2),
        "peak_gib": None if peak is None else round(peak, 2),
    }


def step_memory(args: argparse.Namespace) -> dict:
    """The largest power-of-two batch (up to 64) whose bf16 + channels_last training step fits in GPU memory."""
    import torch

    from carvana_seg.training.loop import train_step

    device, tc, v = _settings(args.variant, args.toy)
    if device.type != "cuda":
        return {"size": f"{v.width}x{v.height}", "largest_batch": None, "why": "no CUDA: GPU memory not measured"}
    torch.backends.cudnn.benchmark = True
    fits, batch = 0, v.batch_size
    while batch <= 64:
        try:
            fwd, opt, _sched, crit, x, y = _trainer(v, tc, device, True, False, batch, 2)
            train_step(fwd, x, y, crit, opt, torch.amp.GradScaler("cuda", enabled=False), device, True, True)
            torch.cuda.synchronize()
            fits, batch = batch, batch * 2
        except torch.OutOfMemoryError:
            break
        finally:
            fwd = opt = x = y = None
            torch.cuda.empty_cache()
    return {"size": f"{v.width}x{v.height}", "largest_batch": fits, "tried_up_to": min(batch, 64)}


def step_ensemble(args: argparse.Namespace) -> dict:
    """``benchmarks/test_time.py`` at the competition's variants (toy: the demo's, small photos): pipeline vs
    model-only images/s of the flip-TTA ensemble stage."""
    import torch

    cuda = torch.cuda.is_available() and not args.toy
    flags = (
        [
            "--config",
            "config/config.yaml",
            "--n",
            "16",
            "--folds",
            "2",
            "--workers",
            "8",
            "--batch-size",
            "8",
            "--device",
            "cuda",
            "--multiples",
            "1",
        ]
        if cuda
        else [
            "--n",
            "2",
            "--folds",
            "1",
            "--width",
            "192",
            "--height",
            "128",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--multiples",
            "1",
        ]
    )
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "test_time.py"), *flags],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    last = {ln.split(":")[0]: ln for ln in res.stdout.splitlines()}
    pipeline = float(last["pipeline"].split(":")[1].split()[0])
    models = float(last["pipeline"].split("model-only")[1].split(":")[1].split()[0])
    return {
        "pipeline_images_per_s": pipeline,
        "model_only_images_per_s": models,
        "ratio": round(pipeline / models, 3),
        "flags": " ".join(flags),
    }


def step_dag(args: argparse.Namespace) -> dict:
    """One train job's DAG (synthetic photos, fetch to best.pt) through ``snakemake --resources gpu=1``; what the
    train log says about the device it got and its precision."""
    import yaml

    tiny = {
        "name": "gpucheck",
        "data": {
            "source": "synthetic",
            "synthetic": {"n_train_cars": 3, "n_test_cars": 1, "n_outlier_cars": 0, "width": 96, "height": 64},
        },
        "folds": {"k": 3},
        "resize": {"workers": 1},
        "train": {"num_workers": 0},
        "variants": [
            {
                "name": "v",
                "encoder": "resnet34",
                "encoder_weights": None,
                "width": 64,
                "height": 64,
                "batch_size": 4,
                "epochs": 1,
            }
        ],
    }
    snakemake = Path(sys.executable).parent / "snakemake"
    with tempfile.TemporaryDirectory(prefix="gpu-check-dag-") as tmp:
        (Path(tmp) / "tiny.yaml").write_text(yaml.safe_dump(tiny))
        target = "results/gpucheck/models/v/fold0/best.pt"
        res = subprocess.run(
            [
                str(snakemake),
                "--cores",
                "all",
                "--resources",
                "gpu=1",
                "--configfile",
                "tiny.yaml",
                "-s",
                str(ROOT / "Snakefile"),
                target,
            ],
            cwd=tmp,
            capture_output=True,
            text=True,
            check=False,
        )
        logs = "\n".join(p.read_text() for p in sorted(Path(tmp).glob("results/gpucheck/**/logs/train/*.log")))
        if res.returncode != 0:
            raise SystemExit(f"snakemake failed: {(res.stderr or res.stdout)[-600:]}\n{logs[-600:]}")
    claimed = next((ln.split("gpu: ", 1)[1] for ln in logs.splitlines() if "claimed GPU" in ln), None)
    setup = next((ln for ln in logs.splitlines() if " images at " in ln and "(amp=" in ln), "")
    return {
        "claimed": claimed,
        "device": setup.split(" on ")[-1].split(" (amp=")[0] if setup else None,
        "amp": setup.split("(amp=")[1].split(")")[0] if setup else None,
    }


STEPS = {"env": step_env, "train": step_train, "memory": step_memory, "ensemble": step_ensemble, "dag": step_dag}


# ---- the whole check -----------------------------------------------------------------------------------------


def check(args: argparse.Namespace) -> dict:
    """Every step, in the table's order. On a GPU one at a time (each measures the card alone); at toy sizes on
    the CPU ``--jobs`` at once (default 2: their numbers mean nothing there, only that each step runs), which
    halves the test suite's minutes for this script on 2 cores."""
    deadline = time.monotonic() + args.budget
    caps = {k: (CAP_TOY if args.toy else c) for k, c in CAPS.items()}
    result: dict = {"toy": args.toy, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    t0 = time.monotonic()
    tasks: list[tuple[str, tuple[str, ...], float, dict]] = []  # (step, flags, cap, fields shown with the result)
    result["env"] = run_step(args, "env", cap=caps["env"], deadline=deadline)
    result["memory"] = []
    for k in range(3):
        # toy: every mode at the first size only, fp32 at the others (the test suite's minutes are few)
        for mode in MODES if k == 0 or not args.toy else MODES[:1]:
            cap = caps["compile" if mode.endswith("compile") else "train"]
            flags = ("--variant", str(k), "--mode", mode, "--steps", str(args.steps))
            tasks.append(("train", flags, cap, {"mode": mode}))
        if args.toy:  # no GPU memory to measure: say so without a process start
            size = "x".join(map(str, TOY_SIZES[k]))
            result["memory"].append(
                {"status": "ok", "size": size, "largest_batch": None, "why": "no CUDA: GPU memory not measured"}
            )
        else:
            tasks.append(("memory", ("--variant", str(k)), caps["memory"], {}))
    tasks += [("ensemble", (), caps["ensemble"], {}), ("dag", (), caps["dag"], {})]

    def one(task: tuple[str, tuple[str, ...], float, dict]) -> dict:
        name, flags, cap, fields = task
        return {**fields, **run_step(args, name, *flags, cap=cap, deadline=deadline)}

    with ThreadPoolExecutor(args.jobs if args.toy else 1) as pool:  # threads only wait on the step processes
        done = list(pool.map(one, tasks))
    result["train"] = [d for t, d in zip(tasks, done) if t[0] == "train"]
    result["memory"] += [d for t, d in zip(tasks, done) if t[0] == "memory"]
    result["ensemble"], result["dag"] = done[-2], done[-1]
    result["seconds"] = round(time.monotonic() - t0, 1)
    return result


def _cell(d: dict, key: str) -> str:
    """A step's value for the table ("none" when it measured nothing), or its status when it did not finish."""
    if d.get("status") != "ok":
        return d.get("status", "?")
    return "none" if d.get(key) is None else str(d[key])


def markdown(r: dict) -> str:
    """One table: a row per measurement (the JSON holds everything, including failures' last lines)."""
    env = r["env"]
    versions = f"{_cell(env, 'torch')} / {_cell(env, 'cuda')} / {_cell(env, 'cudnn')}"
    rows = [
        ("environment", "torch / CUDA / cuDNN", versions),
        ("environment", "driver / GPU", f"{_cell(env, 'driver')} / {_cell(env, 'gpu')}"),
    ]
    for t in r["train"]:
        size = t.get("size", "")
        peak = "n/a" if t.get("peak_gib") is None else f"{t['peak_gib']} GiB"
        value = (
            f"{t['images_per_s']} img/s (batch {t['batch']}, peak {peak}, first steps {t['warmup_s']} s)"
            if t.get("status") == "ok"
            else t.get("status", "?")
        )
        rows.append((f"train {size}".strip(), t["mode"], value))
    for m in r["memory"]:
        rows.append(
            (
                f"memory {m.get('size', '')}".strip(),
                "largest batch (bf16+cl)",
                _cell(m, "largest_batch") if m.get("largest_batch") is not None else m.get("why", m["status"]),
            )
        )
    e, d = r["ensemble"], r["dag"]
    rates = f"{_cell(e, 'pipeline_images_per_s')} / {_cell(e, 'model_only_images_per_s')} (ratio {_cell(e, 'ratio')})"
    rows.append(("test ensemble", "pipeline / model-only img/s", rates))
    rows.append(
        (
            "tiny DAG --resources gpu=1",
            "claimed / device / amp",
            f"{_cell(d, 'claimed')} / {_cell(d, 'device')} / {_cell(d, 'amp')}",
        )
    )
    head = (
        f"# gpu-check ({'toy sizes on CPU' if r['toy'] else 'GPU'}), {r['started']}, {r['seconds']} s\n\n"
        "| step | what | result |\n|---|---|---|\n"
    )
    return head + "".join(f"| {a} | {b} | {c} |\n" for a, b, c in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "gpu-check")
    parser.add_argument(
        "--budget", type=float, default=450.0, help="seconds for the whole check (steps that no longer fit are skipped)"
    )
    parser.add_argument("--steps", type=int, default=15, help="timed training steps per size and mode")
    parser.add_argument("--toy", action="store_true", help="toy sizes on the CPU (automatic without CUDA)")
    parser.add_argument("--jobs", type=int, default=2, help="toy only: steps run at once (on a GPU: always one)")
    parser.add_argument("--step", choices=sorted(STEPS), help=argparse.SUPPRESS)
    parser.add_argument("--variant", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, default=MODES[0], help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        print(json.dumps(STEPS[args.step](args)))
        return
    if not args.toy:
        import torch

        from carvana_seg.models import runtime

        if not torch.cuda.is_available() and runtime.gpu_expected():  # a GPU box whose torch cannot use it
            raise SystemExit(f"error: {runtime.gpu_mismatch('auto')}")
        args.toy = not torch.cuda.is_available()
    result = check(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "gpu_check.md").write_text(md := markdown(result))
    print(md)
    print(f"wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}")


if __name__ == "__main__":
    main()
