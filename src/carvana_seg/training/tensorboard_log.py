"""Live training curves in TensorBoard: one run per variant x fold x round, in the directory the train rule names
(``results/<name>/tensorboard/<variant>_fold<k>_round<r>``; ``make tensorboard`` opens them all).

Per epoch (the global step): ``loss/train``, ``loss/val``, ``dice/val``, ``lr``, ``data_share`` (the share of the
training epoch spent waiting for the DataLoader), ``images_per_s``, and ``val/overlays``: the first few validation
images with the prediction (red) and the true mask's outline (green). The CSV metrics and the HTML report stay the
record; this is for watching a run.

Events are flushed before the epoch's resume state is saved. A resumed run opens the writer with
``purge_step = first epoch of this run``, so TensorBoard hides whatever a killed run logged past its saved state
(no duplicated steps); a run that starts from zero removes the old run's event files first.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from skimage.segmentation import find_boundaries

SCALARS = {
    "loss/train": "train_loss",
    "loss/val": "val_loss",
    "dice/val": "val_dice",
    "lr": "lr",
    "data_share": "data_share",
    "images_per_s": "images_per_s",
}


class Board:
    """Writes one run's events; a no-op when ``log_dir`` is None (direct CLI use without ``--tensorboard``)."""

    def __init__(self, log_dir: str | Path | None, first_epoch: int, images: int = 4) -> None:
        self.writer = None
        self.images = images
        if log_dir is None:
            return
        from torch.utils.tensorboard import SummaryWriter

        log_dir = Path(log_dir)
        if first_epoch == 1 and log_dir.is_dir():
            shutil.rmtree(log_dir)  # a fresh start: the old curves belong to another setup
        self.writer = SummaryWriter(str(log_dir), purge_step=first_epoch if first_epoch > 1 else None)

    def epoch(self, epoch: int, row: dict, model: torch.nn.Module, val_ds, device: torch.device) -> None:
        """Log an epoch's metrics row and validation overlays, then flush (before the state is saved)."""
        if self.writer is None:
            return
        for tag, key in SCALARS.items():
            self.writer.add_scalar(tag, float(row[key]), epoch)
        if self.images and len(val_ds):
            self.writer.add_images(
                "val/overlays", overlays(model, val_ds, device, self.images), epoch, dataformats="NHWC"
            )
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def overlays(model: torch.nn.Module, val_ds, device: torch.device, n: int) -> np.ndarray:
    """(n, H, W, 3) uint8: the first ``n`` validation images, predicted mask tinted red, true outline green."""
    pairs = [val_ds[i] for i in range(min(n, len(val_ds)))]
    x = torch.stack([p[0] for p in pairs])
    masks = torch.stack([p[1] for p in pairs])[:, 0]  # uint8 coverage 0..255 (the dataset's), or 0..1
    truth = masks.numpy() >= (128 if masks.dtype == torch.uint8 else 0.5)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        pred = (model(x.to(device))[:, 0] >= 0).cpu().numpy()
    model.train(was_training)
    out = x.permute(0, 2, 3, 1).numpy().astype(np.float32)
    out[pred] = 0.6 * out[pred] + 0.4 * np.array([255, 0, 0], np.float32)
    out[np.stack([find_boundaries(t, mode="inner") for t in truth])] = (0, 255, 0)
    return out.astype(np.uint8)
