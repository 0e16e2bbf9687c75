"""scikit-learn's digits (1797 8x8 images, 10 classes) as 64-token pixel sequences, 16 grey levels."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

LEVELS = 16  # pixel vocabulary: digits pixels are 0..16, quantised to 0..15
SEQ_LEN = 64


def digits_sequences() -> tuple[torch.Tensor, torch.Tensor]:
    """(1797, 64) int64 pixel tokens in [0, 15] (raster order) and (1797,) digit labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    pixels = np.clip(np.asarray(d.data, dtype=np.int64), 0, LEVELS - 1)
    return torch.from_numpy(pixels), torch.from_numpy(np.asarray(d.target, dtype=np.int64))


class DigitsDataModule(L.LightningDataModule):
    """Train / validation split of the digits sequences; batches are ``{"pixels", "labels"}`` dicts.

    Args:
        batch_size: training batch size.
        val_fraction: fraction of the images held out (fixed-seed split).
        seed: split seed.
    """

    def __init__(self, batch_size: int = 64, val_fraction: float = 0.25, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.seed = seed

    def setup(self, stage: str | None = None) -> None:
        x, y = digits_sequences()
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed))
        n_val = int(round(len(x) * self.val_fraction))
        self.val_idx, self.train_idx = perm[:n_val], perm[n_val:]
        self.x, self.y = x, y

    def _loader(self, idx: torch.Tensor, shuffle: bool, batch_size: int) -> DataLoader:
        ds = _DictDataset(self.x[idx], self.y[idx])
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, drop_last=shuffle)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_idx, True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_idx, False, 256)

    def probe_set(self) -> dict[str, torch.Tensor]:
        """All 1797 images with their labels: the demo monitor's probe set (no gradients flow from it)."""
        x, y = digits_sequences()
        return {"pixels": x, "labels": y}


class _DictDataset(TensorDataset):
    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x, y = super().__getitem__(i)
        return {"pixels": x, "labels": y}
