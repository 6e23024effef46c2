"""Training steps without a host sync per step (``train.sync_every_steps`` > 1), and moving a batch to the device.

Reading the loss back (``float(loss)``) or branching on ``isfinite`` waits for the GPU to finish the step, so the
CPU cannot queue the next one. Here the loss sum, the images seen, the non-finite steps and the longest run of
them stay on the device (:class:`Tally`) and the training loop reads them every N steps. A non-finite loss cannot
be skipped without that read, so its step runs with every gradient zeroed on the device instead.
"""

from __future__ import annotations

import torch

from carvana_seg.models.runtime import autocast


def to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool):
    """Images and masks onto ``device``; masks travel as uint8 and become coverage 0..1 there (float32(m) / 255:
    the same numbers the dataset computed on the CPU before), a float mask as given."""
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = y.to(device, non_blocking=True)
    return x, (y.float().div_(255.0) if y.dtype == torch.uint8 else y)


def train_step_deferred(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    criterion,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    use_amp: bool,
    channels_last: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``loop.train_step`` without a host sync: (detached loss, finite flag), both 0-d tensors on ``device``.

    A non-finite step runs with every gradient zeroed (``masked_fill``: NaN and inf become 0); AdamW's moment decay
    and weight decay still apply, and the schedule advances."""
    x, y = to_device(x, y, device, channels_last)
    with autocast(device, use_amp):
        logits = model(x)
    loss = criterion(logits, y)
    opt.zero_grad(set_to_none=True)
    finite = torch.isfinite(loss.detach())
    scaler.scale(torch.where(finite, loss, torch.zeros_like(loss))).backward()
    bad = ~finite
    for group in opt.param_groups:
        for p in group["params"]:
            if p.grad is not None:
                p.grad.masked_fill_(bad, 0.0)
    scaler.step(opt)
    scaler.update()
    return loss.detach(), finite


class Tally:
    """An epoch's loss sum, images seen, non-finite steps and longest run of them, kept on ``device``."""

    def __init__(self, device: torch.device) -> None:
        zero = torch.zeros((), dtype=torch.int64, device=device)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.n_seen, self.skipped, self.run, self.worst = zero.clone(), zero.clone(), zero.clone(), zero.clone()

    def add(self, loss: torch.Tensor, finite: torch.Tensor, images: int) -> None:
        """Count one step (no host sync): its loss times ``images`` when finite, else one more non-finite step."""
        self.loss_sum += torch.where(finite, loss.double() * images, 0.0)
        self.n_seen += finite.long() * images
        self.skipped += (~finite).long()
        self.run = torch.where(finite, 0, self.run + 1)
        self.worst = torch.maximum(self.worst, self.run)

    def read(self) -> tuple[float, int, int, int]:
        """(loss sum, images seen, non-finite steps, longest run of them): the one host sync."""
        return float(self.loss_sum), int(self.n_seen), int(self.skipped), int(self.worst)
