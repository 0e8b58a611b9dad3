"""What training optimises and what it sees: the set-valued loss and the (data set, class) sampler.

* ``SetLoss``: cross-entropy on label SETS. A row's target indexes ``data.label_sets(task)``; an exact
  diagnosis allows one class, a benign/malignant-only label (ISIC 2020 "unknown", Kaggle folders) allows
  every benign or every malignant class, and the loss is -log of the summed probability of what it
  allows. With one class per target it is plain (optionally class-weighted, label-smoothed) cross-entropy.
* ``balanced_weights``: per-image sampling weights so that each data set contributes a share that grows
  only with the square root of its size, and inside a set, malignant and benign images are drawn equally
  often (capped oversampling). A model then cannot lower its loss by learning which set an image came
  from (prevalence differs 2 % .. 50 % between sets) - it has to tell lesions apart inside each set.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np
import torch
from torch import nn


class SetLoss(nn.Module):
    """-log P(class in allowed set), averaged; ``members[t]`` lists the classes target ``t`` allows."""

    def __init__(self, members: Sequence[Sequence[int]], n_classes: int, label_smoothing: float = 0.0,
                 target_weight: Sequence[float] | None = None):
        super().__init__()
        mask = torch.full((len(members), n_classes), float("-inf"))
        for t, allowed in enumerate(members):
            mask[t, list(allowed)] = 0.0
        self.register_buffer("mask", mask)
        self.label_smoothing = float(label_smoothing)
        weight = torch.ones(len(members)) if target_weight is None else torch.as_tensor(target_weight, dtype=torch.float32)
        self.register_buffer("target_weight", weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        log_z = torch.logsumexp(logits, dim=1)
        nll = log_z - torch.logsumexp(logits + self.mask[targets], dim=1)
        if self.label_smoothing:
            # smoothing towards the uniform distribution over all classes (as nn.CrossEntropyLoss does)
            uniform = log_z - logits.mean(dim=1)
            nll = (1 - self.label_smoothing) * nll + self.label_smoothing * uniform
        w = self.target_weight[targets]
        return (nll * w).sum() / w.sum()


def balanced_weights(datasets: Sequence[str], malignant: Sequence[int], set_power: float = 0.5,
                     max_oversample: float = 8.0) -> np.ndarray:
    """Sampling weight per image (sums to 1): set share ~ n_set**set_power, classes even inside a set.

    A class is oversampled at most ``max_oversample`` times its natural frequency in its set, so the
    37 melanomas of a 2,000-image screening set are not each drawn dozens of times per epoch; such a set
    then contributes less than its square-root share (the withheld part of its malignant half).
    """
    datasets = list(datasets)
    y = np.asarray(malignant, dtype=int)
    size = Counter(datasets)
    share = {d: n ** set_power for d, n in size.items()}
    total = sum(share.values())
    weights = np.zeros(len(datasets))
    for d, n in size.items():
        idx = np.array([i for i, x in enumerate(datasets) if x == d])
        for cls in (0, 1):
            members = idx[y[idx] == cls]
            if len(members) == 0:
                continue
            natural = len(members) / n
            # 0.5 when both classes exist (balanced), capped at max_oversample x the natural share
            wanted = 0.5 if len(members) < n else 1.0
            cls_share = min(wanted, natural * max_oversample)
            weights[members] = share[d] / total * cls_share / len(members)
    return weights / weights.sum()


class ShardedWeightedSampler(torch.utils.data.Sampler):
    """Draws ``num_samples`` indices per epoch by ``weights`` (with replacement; ``replace=False``: a plain
    shuffle); rank ``r`` of ``world`` takes every world-th draw, so DDP processes see disjoint shares of
    one global draw that depends only on (seed, epoch) - which also makes a resumed run draw the same."""

    def __init__(self, weights: np.ndarray, num_samples: int, seed: int = 0, rank: int = 0, world: int = 1,
                 replace: bool = True):
        self.weights = np.asarray(weights, dtype=float) / np.sum(weights)
        self.num_samples, self.seed, self.rank, self.world = int(num_samples), int(seed), int(rank), int(world)
        self.replace = replace
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def draw(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        if not self.replace:
            return rng.permutation(len(self.weights))[:self.num_samples]
        return rng.choice(len(self.weights), size=self.num_samples, replace=True, p=self.weights)

    def __iter__(self):
        return iter(self.draw()[self.rank::self.world].tolist())

    def __len__(self) -> int:
        return len(range(self.rank, self.num_samples, self.world))
