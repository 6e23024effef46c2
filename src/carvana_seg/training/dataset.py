"""Torch dataset over the resize cache, and the fold split.

Samples come from the memory-mapped cache (``resize_cache.load``) restricted to a list of image ids. The memmaps
are opened lazily in each process and never pickled, so DataLoader workers (fork or spawn) share the page cache
instead of receiving a copy of the arrays. Extra training images in a Kaggle layout (the pseudo-labelled test
photos: linked JPEGs and GIF masks) are decoded and resized by the DataLoader workers with the cache's own
preprocessing (``resize_cache.load_pair``), so they are never stored again at every network size.
Output per sample: image (3, H, W) uint8 — normalisation happens inside the model (``model.Normalized``) — and
mask (1, H, W) uint8 coverage 0..255: a quarter of float32's bytes over the bus; ``loop`` divides by 255 on the
device (``float32(m) / 255``, the same numbers the CPU produced before).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from carvana_seg.core import layout
from carvana_seg.data import resize_cache
from carvana_seg.pipeline.errors import DataError
from carvana_seg.training import augment as aug

FOLD_COLUMNS = ("img", "car", "view", "fold", "area")


def read_folds(folds_csv: str | Path) -> pd.DataFrame:
    """``folds.csv`` (img, car, view, fold, area) with the columns checked."""
    path = Path(folds_csv)
    if not path.is_file():
        raise DataError(f"{path}: folds file not found")
    df = pd.read_csv(path, dtype={"img": str, "car": str})
    missing = [c for c in FOLD_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing columns {missing}")
    return df


def split_ids(folds: pd.DataFrame, fold: int) -> tuple[list[str], list[str]]:
    """(train ids, validation ids): validation = the fold's cars, training = every other car."""
    if fold not in set(folds["fold"].tolist()):
        raise DataError(f"fold {fold} does not occur in folds.csv (folds: {sorted(set(folds['fold']))})")
    val = folds["fold"] == fold
    return sorted(folds.loc[~val, "img"]), sorted(folds.loc[val, "img"])


class CacheDataset(Dataset):
    """Image/mask pairs of ``ids`` from a resize cache, optionally augmented."""

    def __init__(self, cache_dir: str | Path, ids: list[str], augment=None) -> None:
        self.cache_dir = Path(cache_dir)
        self.ids = list(ids)
        self.augment = augment
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None
        all_ids = (self.cache_dir / "ids.txt").read_text().split() if (self.cache_dir / "ids.txt").is_file() else None
        if all_ids is None:
            raise DataError(f"{self.cache_dir}: not a resize cache (ids.txt missing)")
        index = {i: k for k, i in enumerate(all_ids)}
        missing = [i for i in self.ids if i not in index]
        if missing:
            raise DataError(f"{self.cache_dir}: {len(missing)} ids not in the cache, e.g. {missing[:3]}")
        self.rows = np.array([index[i] for i in self.ids], dtype=np.int64)

    def _open(self) -> tuple[np.ndarray, np.ndarray]:
        if self._arrays is None:
            images, masks, _ = resize_cache.load(self.cache_dir)
            self._arrays = (images, masks)
        return self._arrays

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_arrays"] = None  # workers reopen the memmaps themselves
        return state

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the cached images."""
        images, _ = self._open()
        return int(images.shape[2]), int(images.shape[1])

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, masks = self._open()
        k = self.rows[i]
        return to_tensors(self.augment, np.asarray(images[k]), np.asarray(masks[k]))

    def reseed(self, seed: int) -> None:
        """Reseed the augmentation (called per epoch in the main process and per DataLoader worker)."""
        aug.reseed(self.augment, seed)


def to_tensors(augment, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment one (H, W, 3) uint8 image and (H, W) uint8 coverage mask; return (3, H, W) uint8, (1, H, W) uint8."""
    image, mask = aug.apply(augment, image, mask)
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    y = torch.from_numpy(np.array(mask, dtype=np.uint8)).unsqueeze(0)  # a copy: the cache is a read-only memmap
    return x, y


class LayoutDataset(Dataset):
    """Every image of a Kaggle training layout (``train/``, ``train_masks/``) at ``size`` = (W, H), decoded per
    sample: the pseudo-labelled test photos, which are already on disk as JPEG (module docstring)."""

    def __init__(self, root: str | Path, size: tuple[int, int], augment=None) -> None:
        self.root = Path(root)
        if not (self.root / layout.TRAIN_MASKS_CSV).is_file():
            raise DataError(f"{self.root}: not a training layout ({layout.TRAIN_MASKS_CSV} missing)")
        self.ids = layout.list_ids(self.root / layout.TRAIN_DIR)
        self.size = tuple(size)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return to_tensors(self.augment, *resize_cache.load_pair(self.root, self.ids[i], self.size))

    def reseed(self, seed: int) -> None:
        aug.reseed(self.augment, seed)


class ConcatCacheDataset(torch.utils.data.ConcatDataset):
    """Several ``CacheDataset``s trained as one (a fold's training cars plus extra images); reseeds them all."""

    @property
    def size(self) -> tuple[int, int]:
        return self.datasets[0].size

    def reseed(self, seed: int) -> None:
        for d in self.datasets:
            d.reseed(seed)


def build_datasets(
    cache_dir: str | Path, train_ids: list[str], val_ids: list[str], augment=None, extra_layouts: list[str | Path] = ()
) -> tuple[Dataset, CacheDataset]:
    """(training set, validation set). Training: ``train_ids`` of ``cache_dir`` plus *every* image of each extra
    training layout (e.g. pseudo-labelled test images), augmented; validation: ``val_ids`` of ``cache_dir`` only."""
    val = CacheDataset(cache_dir, val_ids)
    parts = [CacheDataset(cache_dir, train_ids, augment)]
    for extra in extra_layouts:
        part = LayoutDataset(extra, parts[0].size, augment)
        leak = sorted(set(part.ids) & set(val_ids))
        if leak:
            raise DataError(f"{extra}: {len(leak)} images of the validation fold in an extra layout, e.g. {leak[:3]}")
        if part.ids:
            parts.append(part)
    return (parts[0] if len(parts) == 1 else ConcatCacheDataset(parts)), val


def worker_init(worker_id: int) -> None:  # noqa: ARG001
    """DataLoader ``worker_init_fn``: derive the worker's augmentation seed from the loader's per-worker seed."""
    info = torch.utils.data.get_worker_info()
    if info is not None and isinstance(info.dataset, (CacheDataset, LayoutDataset, ConcatCacheDataset, EpochSeeded)):
        info.dataset.reseed(torch.initial_seed())
    np.random.seed(torch.initial_seed() % (2**32))


class EpochSeeded(Dataset):
    """``dataset`` read with keys ``(base_seed, i)`` (``EpochSampler``), for persistent DataLoader workers.

    A fresh worker is seeded by the DataLoader with ``base_seed + worker_id`` (Python, torch, then ``worker_init``:
    numpy and the augmentation). A persistent worker lives across epochs, so each epoch's first key with a new
    ``base_seed`` repeats exactly that seeding: every epoch draws what it drew when workers were re-forked per
    epoch, and a resumed run trains the same epochs as an uninterrupted one."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self._base: int | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        base, i = key
        info = torch.utils.data.get_worker_info()
        if info is not None and base != self._base:
            seed = base + info.id
            random.seed(seed)
            torch.manual_seed(seed)
            worker_init(info.id)
        self._base = base
        return self.dataset[i]

    def reseed(self, seed: int) -> None:
        self.dataset.reseed(seed)


class EpochSampler(torch.utils.data.Sampler):
    """A random permutation drawn from ``generator`` (like ``RandomSampler``), each index paired with ``base_seed``:
    the worker seed base of the epoch, set by the training loop before each epoch (``EpochSeeded``)."""

    def __init__(self, n: int, generator: torch.Generator) -> None:
        self.n, self.generator, self.base_seed = n, generator, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        base = self.base_seed
        yield from ((base, int(i)) for i in torch.randperm(self.n, generator=self.generator).tolist())
