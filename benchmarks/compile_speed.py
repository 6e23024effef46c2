"""Eager vs ``torch.compile`` (config keys train.compile, predict.compile): compile time and steady speed.

    python benchmarks/compile_speed.py [--size 96x64] [--batch-size 4] [--steps 10] [--threads 2] [--device auto]
                                       [--modes eager compile] [--amp]

For each mode, with the first variant of ``--config`` (config/config.yaml: the competition's resnet34 U-Net) at
``--size``: the first training step (for ``compile``: tracing and code generation included), then the steady
images/s of ``train_step`` (forward, loss, backward, the config's optimizer: AdamW) and of inference
(``inference.predict_probs``, flip-TTA), the best of three passes of
``--steps`` batches. The same functions the stages run; random inputs. Not a pytest test (it prints a table).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from carvana_seg.models import model as modelmod
from carvana_seg.models.runtime import autocast, maybe_compile, pick_device, predict_probs
from carvana_seg.pipeline import config as cfgmod
from carvana_seg.training.loop import train_step
from carvana_seg.training.losses import BceDiceLoss
from carvana_seg.training.optim import build_optimizer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _rate(fn, steps: int, images: int, device: torch.device) -> float:
    """Images/s of ``fn()`` (one batch), best of three passes of ``steps`` calls."""
    best = float("inf")
    for _ in range(3):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return steps * images / best


def bench(mode: str, variant: dict, tc: dict, args: argparse.Namespace, device: torch.device) -> dict:
    w, h = (int(v) for v in args.size.split("x"))
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # as the stages set it
    model = modelmod.build_model(variant["arch"], variant["encoder"], None, variant["name"]).to(device)
    fwd = maybe_compile(model, mode == "compile")
    opt = build_optimizer(model.parameters(), tc["optimizer"], variant["lr"], tc["weight_decay"])
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    criterion = BceDiceLoss()
    x = torch.randint(0, 256, (args.batch_size, 3, h, w), dtype=torch.uint8)
    y = (torch.rand(args.batch_size, 1, h, w) > 0.5).to(torch.uint8) * 255  # uint8 coverage, as the dataset yields
    amp = args.amp and device.type == "cuda"

    def step() -> None:
        train_step(fwd, x, y, criterion, opt, scaler, device, amp, False)

    fwd.train()
    t0 = time.perf_counter()
    step()
    _sync(device)
    first = time.perf_counter() - t0
    train_ips = _rate(step, args.steps, args.batch_size, device)
    fwd.eval()
    xd = x.to(device)
    with autocast(device, amp):
        predict_probs([fwd], xd, amp=amp)  # compiles the inference graph (eval mode, 2N batch) once
    infer_ips = _rate(lambda: predict_probs([fwd], xd, amp=amp), args.steps, args.batch_size, device)
    return {"mode": mode, "first_step_s": first, "train_ips": train_ips, "infer_ips": infer_ips}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="config/config.yaml", help="whose first variant and optimizer to time")
    ap.add_argument("--size", default="96x64", help="WIDTHxHEIGHT (multiples of 32)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--modes", nargs="+", default=["eager", "compile"], choices=["eager", "compile"])
    ap.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    args = ap.parse_args()
    device = pick_device(args.device)
    torch.set_num_threads(args.threads)
    cfg = cfgmod.load(args.config)
    variant, tc = cfg["variants"][0], cfg["train"]
    print(
        f"# torch {torch.__version__} on {device} ({platform.processor() or platform.machine()}), "
        f"{args.threads} threads, {variant['encoder']} {variant['arch']} at {args.size}, batch {args.batch_size}, "
        f"{tc['optimizer']}"
    )
    rows = [bench(m, variant, tc, args, device) for m in args.modes]
    print(f"{'mode':<8} {'first step s':>12} {'train img/s':>12} {'infer img/s':>12}")
    for r in rows:
        print(f"{r['mode']:<8} {r['first_step_s']:>12.2f} {r['train_ips']:>12.1f} {r['infer_ips']:>12.1f}")
    if len(rows) == 2:
        e, c = rows
        train, infer = c["train_ips"] / e["train_ips"], c["infer_ips"] / e["infer_ips"]
        print(f"{'speed-up':<8} {'':>12} {train:>11.2f}x {infer:>11.2f}x")


if __name__ == "__main__":
    main()
