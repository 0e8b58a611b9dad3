"""A model scored on a data set: the device it runs on, its batches, softmax probabilities and p_malignant.

Shared by the training loop (val AUC each epoch) and the end of a run (``finish.py``: test-time flips,
threshold, test figures), and by ``evaluate``'s device choice.
"""

from __future__ import annotations

from typing import Sequence

import click
import numpy as np
import torch
from torch import nn

from .dataset import DermoscopyDataset


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when torch sees one, else cpu; ``cuda`` without one is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise click.ClickException("--device cuda: no CUDA device is visible to torch here")
    return torch.device(name)


def data_loader(dataset: DermoscopyDataset, batch_size: int, workers: int, shuffle: bool = False,
                sampler: torch.utils.data.Sampler | None = None, seed: int = 0) -> torch.utils.data.DataLoader:
    """A DataLoader whose order depends only on ``seed`` (and the sampler's own seed)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None,
                                       sampler=sampler, num_workers=workers, generator=generator,
                                       persistent_workers=workers > 0, drop_last=False)


@torch.no_grad()
def predict_probabilities(model: nn.Module, dataset: DermoscopyDataset, device: torch.device, batch_size: int = 64,
                          workers: int = 0, amp: bool = False, channels_last: bool = False) -> np.ndarray:
    """Softmax class probabilities for every sample of ``dataset`` (in order)."""
    model.eval()
    out = []
    for batch, _ in data_loader(dataset, batch_size, workers):
        batch = batch.to(device, non_blocking=True)
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=amp and device.type == "cuda"):
            logits = model(batch)
        out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


def p_malignant(probabilities: np.ndarray, malignant_idx: Sequence[int]) -> np.ndarray:
    """P(malignant) per image: the summed probabilities of the malignant classes."""
    return probabilities[:, list(malignant_idx)].sum(axis=1)
