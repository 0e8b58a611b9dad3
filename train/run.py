"""The records of one training run: its config, the split and the model it built, and what it gives back.

``TrainConfig`` goes in (``dermsort train``'s options), ``trainer.train`` builds a ``TrainedRun`` (the
split, the preprocessing, the best epoch's weights and the loop's history) and hands it to
``finish.finish_run``, which fixes the threshold on val, scores test once and returns a ``TrainResult``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dermsort.runtime.metadata import ModelMetadata, PreprocessSpec

from .data import Row
from .dataset import Augment, ImageCache


@dataclass
class TrainConfig:
    """Everything that defines a training run (recorded verbatim in the checkpoint's provenance)."""

    data: list[str]
    out: str
    architecture: str = "efficientnet_lite0"
    task: str = "binary"
    epochs: int = 12
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-2
    seed: int = 0
    target_sensitivity: float = 0.95
    device: str = "auto"
    amp: bool = False
    #: train only the classifier for the first N epochs (the backbone keeps its pretrained features)
    freeze_backbone_epochs: int = 0
    #: the first K stages (stem, early blocks) stay frozen for the whole run: cheaper backward pass
    freeze_stages: int = 0
    max_images: int | None = None
    image_size: int | None = None
    pretrained: bool = True
    split_mode: str = "given"
    folds: int | None = None
    fold: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    #: stop after this many epochs without a better val AUC
    patience: int = 4
    #: wall-clock budget: no epoch is started that would probably end after it (shared CPUs vary a lot)
    max_minutes: float | None = None
    #: class imbalance: "sets" (sample (data set, class) evenly: see objective.balanced_weights),
    #: "loss" (class-weighted loss), "sampler" (class-weighted sampling) or "none"
    balance: str = "loss"
    #: the classifier learns this many times faster than the pretrained body
    head_lr_mult: float = 1.0
    label_smoothing: float = 0.0
    #: channels-last memory layout: ~1.8x cheaper training steps on CPU
    channels_last: bool = True
    #: epoch choice: "sets" = mean of the AUCs inside each val set with >= ``min_set_malignant`` malignant
    #: images (a pooled AUC partly rewards telling the sets apart); "pooled" = one AUC over all val images
    select_on: str = "sets"
    #: a data set joins the epoch choice and the threshold rule when its val split has this many malignant
    min_set_malignant: int = 50
    #: test-time flips: the model's output is the mean of the logits of the image and its mirror images
    tta: str = "none"
    workers: int = 0
    threads: int | None = None
    n_boot: int = 2000
    augment: dict[str, Any] = field(default_factory=dict)
    #: continue from ``out/last.pt`` (written after every epoch) when a run was interrupted
    resume: bool = False
    #: colour constancy in the preprocessing ("none" or "shades_of_gray"): recorded in the metadata
    color_constancy: str = "none"
    #: exponential moving average of the weights (0 = off); val, the epoch choice and export use it
    ema_decay: float = 0.0


@dataclass
class TrainResult:
    """What ``train`` gives back: the checkpoint written, metrics.json's content and the model's metadata."""

    checkpoint: Path
    metrics: dict[str, Any]
    metadata: ModelMetadata


@dataclass
class SplitRows:
    """The labelled images of a run and the split each one is in (decided once, before any training)."""

    rows: list[Row]
    #: each row's training target (``data.class_index`` for the task)
    targets: list[int]
    #: each row's split: "train" / "val" / "test"
    splits: list[str]
    #: split name -> indices into ``rows``
    part: dict[str, list[int]]
    #: split name -> counts printed and recorded in the provenance (``split.split_summary``)
    summary: dict[str, Any]

    def rows_of(self, split: str) -> list[Row]:
        return [self.rows[i] for i in self.part[split]]

    def targets_of(self, split: str) -> list[int]:
        return [self.targets[i] for i in self.part[split]]


@dataclass
class TrainedRun:
    """Everything the training loop built that the end of the run (``finish.finish_run``) reads."""

    config: TrainConfig
    #: the best epoch's weights loaded, eval mode
    model: nn.Module
    best_state: dict[str, torch.Tensor]
    data: SplitRows
    spec: PreprocessSpec
    #: decoded train/val pixels (test is decoded only when it is scored)
    cache: ImageCache
    augment: Augment
    classes: list[str]
    malignant_classes: list[str]
    device: torch.device
    amp: bool
    history: list[dict[str, Any]]
    best_epoch: int
    best_auc: float
    #: "epochs", "early stopping" or "time budget"
    stopped_by: str
    resumed_from: int | None
    class_weight: np.ndarray
    #: where the starting weights came from (``models.pretrained_provenance``)
    provenance_weights: dict[str, Any]
    train_seconds: float
    #: time.time() at the start (an interrupted run's earlier minutes included)
    started: float

    @property
    def malignant_idx(self) -> list[int]:
        return [self.classes.index(c) for c in self.malignant_classes]
