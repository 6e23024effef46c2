"""The CPU row of the planner's throughput table (``carvana_seg.plan.throughput``): achieved FLOP/s of a training
step and of a forward pass, for a variant at a size a CPU can run.

    python benchmarks/plan_throughput.py [--config config/config.yaml] [--size 128x128] [--batch-size 2]
                                         [--steps 6] [--threads N] [--device cpu]

FLOPs per image come from the planner itself (``plan.model_cost``: torch's flop counter), so the printed TFLOP/s
is in the planner's units. With ``--device cuda`` it measures a GPU row the same way. Not a pytest test.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from carvana_seg.models import model as modelmod
from carvana_seg.models.runtime import pick_device
from carvana_seg.pipeline import config as cfgmod
from carvana_seg.plan.model_cost import model_cost
from carvana_seg.training.loop import train_step
from carvana_seg.training.losses import BceDiceLoss


def rate(step, steps: int, device: torch.device) -> float:
    """Seconds per call of ``step`` (best of ``steps`` after one warm-up call)."""
    best = float("inf")
    for k in range(steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if k:
            best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--size", default="128x128")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    w, h = (int(v) for v in args.size.split("x"))
    variant = dict(cfgmod.load(args.config)["variants"][0], width=w, height=h, encoder_weights=None)
    cost = model_cost(variant)
    model = modelmod.build_model(variant["arch"], variant["encoder"], None, variant["name"]).to(device)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-4)
    criterion, scaler = BceDiceLoss(), torch.amp.GradScaler(device.type, enabled=False)
    x = torch.randint(0, 256, (args.batch_size, 3, h, w), dtype=torch.uint8)
    y = (torch.rand(args.batch_size, 1, h, w) > 0.5).float()
    amp = device.type == "cuda"
    model.train()
    t_train = rate(lambda: train_step(model, x, y, criterion, opt, scaler, device, amp, amp), args.steps, device)
    model.eval()
    xd = x.to(device)
    with torch.inference_mode():
        t_fwd = rate(lambda: model(xd), args.steps, device)
    n = args.batch_size
    print(
        f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, device {device}, "
        f"{variant['encoder']} {variant['arch']} {w}x{h}, batch {n}, best of {args.steps}"
    )
    print(
        f"train: {n / t_train:.2f} img/s, {cost.train * n / t_train / 1e12:.4f} TFLOP/s; "
        f"forward: {n / t_fwd:.2f} img/s, {cost.forward * n / t_fwd / 1e12:.4f} TFLOP/s"
    )


if __name__ == "__main__":
    main()
