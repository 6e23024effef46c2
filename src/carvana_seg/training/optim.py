"""Optimizer and learning-rate schedule of the ``train`` stage, built from ``train.optimizer`` / ``train.schedule``.

- ``rmsprop`` + ``plateau`` (the seed's recipe): RMSprop at the variant's ``lr``, divided by ``scheduler_factor``
  after ``scheduler_patience`` epochs without a better validation Dice. Stepped once per epoch.
- ``adamw`` (decoupled weight decay) with ``onecycle`` (``OneCycleLR``: warm-up from lr/25 over ``warmup_share``
  of the steps, cosine annealing to ~0) or ``cosine`` (linear warm-up from 0 over ``warmup_share``, then cosine to
  0). Both are stepped after every optimisation step, so a short CPU run still ends with a small learning rate.

Measured on the real sample (docs/recipe.md): on a few epochs the plateau schedule never gets to lower the rate;
a warm-up + cosine ends training at a low rate and converges further.
"""

from __future__ import annotations

import math

import torch

from carvana_seg.settings.train import Train
from carvana_seg.settings.variants import Variant

OPTIMIZERS = ("rmsprop", "adamw")
SCHEDULES = ("plateau", "onecycle", "cosine")


def build_optimizer(params, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The optimizer ``name`` (``OPTIMIZERS``) over ``params``."""
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r} (one of {OPTIMIZERS})")


def warmup_cosine(total_steps: int, warmup_share: float):
    """Multiplier of the peak rate at step s: linear warm-up over ``warmup_share`` of the steps, then cosine to 0."""
    warm = max(1, int(round(warmup_share * total_steps))) if warmup_share > 0 else 0
    decay = max(1, total_steps - warm)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / decay)))

    return factor


class Schedule:
    """A learning-rate schedule with one interface for per-step and per-epoch schedulers."""

    def __init__(
        self,
        opt: torch.optim.Optimizer,
        kind: str,
        lr: float,
        total_steps: int,
        warmup_share: float = 0.1,
        factor: float = 0.1,
        patience: int = 4,
    ) -> None:
        self.kind = kind
        if kind == "plateau":
            self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=factor, patience=patience)
        elif kind == "onecycle":
            self.sched = torch.optim.lr_scheduler.OneCycleLR(
                opt,
                max_lr=lr,
                total_steps=max(1, total_steps),
                pct_start=max(warmup_share, 1e-3),
                anneal_strategy="cos",
                cycle_momentum=isinstance(opt, torch.optim.AdamW),
            )
        elif kind == "cosine":
            self.sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(max(1, total_steps), warmup_share))
        else:
            raise ValueError(f"unknown schedule {kind!r} (one of {SCHEDULES})")
        self.total_steps = max(1, total_steps)
        self.steps = 0

    def after_step(self) -> None:
        """After each optimisation step: advance a per-step schedule (never past its last step)."""
        if self.kind != "plateau" and self.steps < self.total_steps - 1:
            self.sched.step()
        self.steps += 1

    def after_epoch(self, val_dice: float) -> None:
        """After each epoch's validation: the plateau schedule reacts to the validation Dice."""
        if self.kind == "plateau":
            self.sched.step(val_dice)

    def state_dict(self) -> dict:
        return {"sched": self.sched.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.sched.load_state_dict(state["sched"])
        self.steps = state["steps"]


def from_config(
    model: torch.nn.Module, variant: Variant, tc: Train, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, Schedule]:
    """(optimizer, schedule) of a training run from the variant (``lr``, ``epochs``) and ``train`` settings."""
    lr = float(variant.lr)
    opt = build_optimizer(model.parameters(), tc.optimizer, lr, tc.weight_decay)
    sched = Schedule(
        opt,
        tc.schedule,
        lr,
        steps_per_epoch * int(variant.epochs),
        warmup_share=tc.warmup_share,
        factor=tc.scheduler_factor,
        patience=tc.scheduler_patience,
    )
    return opt, sched
