"""Training: read sources -> grouped split -> fine-tune -> pick epoch on val AUC -> threshold on val -> test figures.

The test split is decoded and scored only after the epoch and the threshold are fixed.
Outputs in ``out/``: checkpoint.pt (weights + ModelMetadata + val/test scores), metrics.json,
roc.png, confusion.png, history.json.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import platform
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import click
import numpy as np
import torch
from torch import nn

from . import metrics
# the checkpoint contract lives in checkpoint.py; these names stay importable from here
from .checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, load_checkpoint, save_atomic  # noqa: F401
from .data import Row, class_index, label_set_members, label_sets, read_sources, task_classes
from .dataset import Augment, DermoscopyDataset, ImageCache
from .finish import finish_run
from .objective import SetLoss, ShardedWeightedSampler, balanced_weights
from .models import (build_model, classifier_of, count_stages, default_preprocess, freeze_stages,
                     pretrained_provenance, set_frozen_eval)
from .run import SplitRows, TrainConfig, TrainedRun, TrainResult
# resolve_device and predict_probabilities stay importable from here (evaluate and older callers)
from .scoring import data_loader, p_malignant, predict_probabilities, resolve_device  # noqa: F401
from .split import assert_no_leak, assign_splits, split_summary, subsample

log = logging.getLogger(__name__)

Echo = Callable[[str], None]


#: settings that may differ between an interrupted run and its resumption
_RESUMABLE_CHANGES = {"resume", "max_minutes", "threads", "workers", "n_boot", "patience"}



# --------------------------------------------------------------------------- helpers

def keep_freed_memory() -> bool:
    """Stop glibc from handing every large tensor buffer back to the kernel after each batch.

    By default buffers above 32 MB are mmap'ed and unmapped on free, so each training step
    page-faults its activations in again: on a small shared CPU that cost a third of the CPU time
    as kernel time. Keeping them in the heap trades peak memory (already needed) for that time.
    """
    import ctypes
    import ctypes.util

    if platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        return False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _class_counts(targets: Sequence[int], n_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(targets, dtype=int), minlength=n_classes).astype(float)


class WeightAverage:
    """Exponential moving average of a model's weights (floating-point parameters and buffers).

    The decay warms up as min(decay, (1 + n) / (10 + n)) so the early average is not dominated by
    the pretrained start. ``swap_in`` loads the average into the model and returns the live weights.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.model, self.decay, self.updates = model, float(decay), 0
        live = model.state_dict()
        self.average = {k: v.detach().clone() for k, v in live.items()}
        self._pairs = [(self.average[k], v) for k, v in live.items()]

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for avg, cur in self._pairs:
            if avg.dtype.is_floating_point:
                avg.mul_(d).add_(cur.detach(), alpha=1.0 - d)
            else:
                avg.copy_(cur)

    def swap_in(self) -> dict[str, torch.Tensor]:
        live = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self.average)
        return live

    def state(self) -> dict[str, Any]:
        return {"updates": self.updates, "average": self.average}

    def load(self, state: dict[str, Any] | None) -> None:
        if state:
            self.updates = int(state["updates"])
            for k, v in state["average"].items():
                self.average[k].copy_(v)


# --------------------------------------------------------------------------- the run

def _val_scores(model: nn.Module, val_ds: DermoscopyDataset, val_rows: Sequence[Row], malignant_idx: Sequence[int],
                device: torch.device, config: TrainConfig, amp: bool) -> tuple[np.ndarray, dict[str, Any]]:
    """p_malignant on val and the AUCs the epoch is chosen by (per set and pooled)."""
    probabilities = predict_probabilities(model, val_ds, device, config.batch_size * 2, config.workers, amp,
                                          channels_last=config.channels_last)
    p = p_malignant(probabilities, malignant_idx)
    y = np.array([int(r.malignant) for r in val_rows])
    sets = np.array([r.dataset for r in val_rows])
    per_set = metrics.set_aucs(y, p, sets, config.min_set_malignant)
    pooled = metrics.auc_score(y, p)
    known = [a for a in per_set.values() if a is not None]
    score = float(np.mean(known)) if config.select_on == "sets" and known else pooled
    return p, {"val_auc": pooled, "val_auc_sets": per_set, "val_score": score}


def _epoch_line(epoch: int, record: dict[str, Any], improved: bool) -> str:
    sets = "  ".join(f"{k} {v:.4f}" for k, v in record["val_auc_sets"].items() if v is not None)
    return (f"epoch {epoch}: train loss {record['train_loss']:.4f}  val AUC pooled {record['val_auc'] or float('nan'):.4f}"
            f"  per set: {sets or 'n/a'}  -> score {record['val_score']:.4f}{'  *best*' if improved else ''}  "
            f"({record['seconds']:.0f} s: data {record['data_seconds']:.0f} s, steps {record['step_seconds']:.0f} s)")


@dataclass
class _Progress:
    """The loop's state that last.pt carries across an interruption (besides the weights and optimiser)."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_auc: float = -1.0
    best_epoch: int = -1
    best_state: dict[str, torch.Tensor] | None = None
    stale: int = 0

    def note_val_score(self, score: float | None, epoch: int) -> bool:
        """Record an epoch's val score: True when it is the best so far (the patience count restarts), else
        one more epoch without improvement, whether or not a weight average is kept."""
        if score is not None and score > self.best_auc + 1e-6:
            self.best_auc, self.best_epoch, self.stale = score, epoch, 0
            return True
        self.stale += 1
        return False


@dataclass
class _Optimisation:
    """What one training step uses besides the model and the batch."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    ema: WeightAverage | None


def _read_and_split(config: TrainConfig, echo: Echo) -> SplitRows:
    """Every --data source read, rows without a class of the task left out, split (grouped, no leak), printed."""
    all_rows = read_sources(config.data, echo=echo)
    rows, targets = [], []
    for row in all_rows:
        target = class_index(row, config.task)
        if target is not None:
            rows.append(row)
            targets.append(target)
    if len(rows) < len(all_rows):
        echo(f"{len(all_rows) - len(rows)} images have no {config.task} class (e.g. benign-only or SCC labels) and are left out")
    splits = assign_splits(rows, targets, mode=config.split_mode, seed=config.seed, val_fraction=config.val_fraction,
                           test_fraction=config.test_fraction, folds=config.folds, fold=config.fold)
    if config.max_images:
        keep = subsample(rows, splits, targets, config.max_images, seed=config.seed)
        rows, targets, splits = [rows[i] for i in keep], [targets[i] for i in keep], [splits[i] for i in keep]
    assert_no_leak(rows, splits)
    summary = split_summary(rows, splits)
    for name, counts in summary.items():
        echo(f"split {name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    part = {name: [i for i, s in enumerate(splits) if s == name] for name in ("train", "val", "test")}
    for name in ("train", "val"):
        if not any(rows[i].malignant for i in part[name]) or all(rows[i].malignant for i in part[name]):
            raise click.ClickException(f"the {name} split needs both benign and malignant images "
                                       f"(has {len(part[name])} images); add data or change the split")
    return SplitRows(rows, targets, splits, part, summary)


def _class_weight(train_targets: Sequence[int], n_targets: int) -> np.ndarray:
    """Inverse-frequency weight per target (0 for a target absent from train)."""
    counts = _class_counts(train_targets, n_targets)
    present = counts > 0
    return np.where(present, counts.sum() / (present.sum() * np.maximum(counts, 1)), 0.0)


def _train_sampler(config: TrainConfig, data: SplitRows, class_weight: np.ndarray, rank: int,
                   world: int) -> ShardedWeightedSampler:
    """Each epoch's draw of train images as ``config.balance`` asks, sharded over the DDP ranks."""
    train_targets = data.targets_of("train")
    if config.balance in ("sampler", "sets"):
        train_rows = data.rows_of("train")
        weights = (balanced_weights([r.dataset for r in train_rows], [int(r.malignant) for r in train_rows])
                   if config.balance == "sets" else np.array([class_weight[t] for t in train_targets]))
        return ShardedWeightedSampler(weights, len(train_targets), seed=config.seed, rank=rank, world=world)
    return ShardedWeightedSampler(np.ones(len(train_targets)), len(train_targets), seed=config.seed,
                                  rank=rank, world=world, replace=False)


def _optimiser(config: TrainConfig, trainable: list[nn.Parameter], head_ids: set[int], steps_per_epoch: int,
               ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW (the classifier at ``head_lr_mult`` x lr) with a linear warm-up then cosine decay per step."""
    body_params = [p for p in trainable if id(p) not in head_ids]
    head_params = [p for p in trainable if id(p) in head_ids]
    optimizer = torch.optim.AdamW([{"params": body_params, "lr": config.lr},
                                   {"params": head_params, "lr": config.lr * config.head_lr_mult}],
                                  lr=config.lr, weight_decay=config.weight_decay)
    total_steps = max(1, config.epochs * steps_per_epoch)
    warmup = min(steps_per_epoch, total_steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (step + 1) / max(1, warmup) if step < warmup
        else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup))))
    return optimizer, scheduler


def _resume(last_path: Path, config: TrainConfig, model: nn.Module, opt: _Optimisation, train_ds: DermoscopyDataset,
            progress: _Progress) -> tuple[int, float]:
    """Load an interrupted run's last.pt into the live objects; (its last epoch, the seconds it had spent)."""
    state = torch.load(last_path, map_location="cpu", weights_only=True)
    changed = {k for k, v in asdict(config).items()
               if k not in _RESUMABLE_CHANGES and state["config"].get(k) != (list(v) if isinstance(v, tuple) else v)}
    if changed:
        raise click.ClickException(f"cannot resume {last_path}: {', '.join(sorted(changed))} differ from that run")
    model.load_state_dict(state["model"])
    opt.optimizer.load_state_dict(state["optimizer"])
    opt.scheduler.load_state_dict(state["scheduler"])
    opt.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
    train_ds._calls = state["augment_calls"]
    if opt.ema is not None:
        opt.ema.load(state["ema"])
    progress.history, progress.stale = state["history"], state["stale"]
    progress.best_auc, progress.best_epoch, progress.best_state = state["best_auc"], state["best_epoch"], state["best_state"]
    return state["epoch"], state["elapsed"]


def _last_state(config: TrainConfig, epoch: int, model: nn.Module, opt: _Optimisation, train_ds: DermoscopyDataset,
                progress: _Progress, elapsed: float) -> dict[str, Any]:
    """last.pt's content after ``epoch``: everything ``_resume`` needs to continue bit for bit."""
    return {"config": asdict(config), "epoch": epoch, "model": model.state_dict(),
            "optimizer": opt.optimizer.state_dict(), "scheduler": opt.scheduler.state_dict(),
            "scaler": opt.scaler.state_dict(), "torch_rng": torch.get_rng_state(),
            "augment_calls": train_ds._calls,
            "ema": opt.ema.state() if opt.ema is not None else None, "history": progress.history,
            "stale": progress.stale, "best_auc": progress.best_auc,
            "best_epoch": progress.best_epoch, "best_state": progress.best_state, "elapsed": elapsed}


def _run_batches(net: nn.Module, loader: torch.utils.data.DataLoader, opt: _Optimisation, config: TrainConfig,
                 device: torch.device, amp: bool, epoch: int, echo: Echo) -> dict[str, Any]:
    """One pass over the epoch's train batches; the epoch record's loss and timing fields."""
    t_epoch = time.time()
    running, seen, last_note, data_s, step_s = 0.0, 0, time.time(), 0.0, 0.0
    n_batches = len(loader)
    t_data = time.time()
    for b, (images, labels) in enumerate(loader, 1):
        t_step = time.time()
        data_s += t_step - t_data
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        opt.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=amp):
            loss = opt.criterion(net(images), labels)
        opt.scaler.scale(loss).backward()
        opt.scaler.step(opt.optimizer)
        opt.scaler.update()
        opt.scheduler.step()
        if opt.ema is not None:
            opt.ema.update()
        running += float(loss.detach()) * len(labels)
        seen += len(labels)
        t_data = time.time()
        step_s += t_data - t_step
        if time.time() - last_note > 30 or b == n_batches:
            last_note = time.time()
            spent = time.time() - t_epoch
            eta_epoch = spent / b * (n_batches - b)
            eta_run = eta_epoch + spent / b * n_batches * (config.epochs - epoch)
            echo(f"  epoch {epoch}/{config.epochs}: {b}/{n_batches} batches, loss {running / seen:.4f}, "
                 f"{spent:.0f} s; ETA epoch {eta_epoch:.0f} s, run <= {eta_run / 60:.1f} min")
    return {"train_loss": running / max(1, seen), "data_seconds": round(data_s, 1), "step_seconds": round(step_s, 1)}


def train(config: TrainConfig, echo: Echo = click.echo) -> TrainResult:
    """Run one training as configured; returns the checkpoint path, the metrics and the metadata."""
    from . import distributed

    started = time.time()
    dist = distributed.setup(config.device)
    if not dist.is_main:
        echo = lambda *_a, **_k: None  # noqa: E731 - only rank 0 talks
    out = Path(config.out)
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = dist.device or resolve_device(config.device)
    if device.type == "cpu":
        keep_freed_memory()
    amp = config.amp and device.type == "cuda"
    if config.amp and not amp:
        echo("note: --amp only applies on CUDA; training in float32 on the CPU")

    # ---- data and split
    classes, malignant_classes = task_classes(config.task)
    data = _read_and_split(config, echo)

    # ---- model
    spec = default_preprocess(config.architecture, config.image_size, config.color_constancy)
    model = build_model(config.architecture, len(classes), config.pretrained)
    provenance_weights = pretrained_provenance(config.architecture, config.pretrained)
    echo(f"model {config.architecture}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters; "
         f"start: {provenance_weights.get('package') or provenance_weights['source']}")
    frozen = freeze_stages(model, config.architecture, config.freeze_stages)
    if frozen:
        echo(f"first {len(frozen)} of {count_stages(model, config.architecture)} stages frozen for the whole run")
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    head = classifier_of(model, config.architecture)
    head_ids = {id(p) for p in head.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]

    # ---- data pipeline (train pixels == runtime pixels: see dataset.py)
    cache = ImageCache(spec)
    t0 = time.time()
    cache.warm([r.path for r in data.rows_of("train") + data.rows_of("val")], threads=config.threads or os.cpu_count() or 1)
    echo(f"decoded {len(cache)} train/val images in {time.time() - t0:.0f} s ({cache.nbytes() / 1e6:.0f} MB cached)")
    augment = Augment(**config.augment)
    train_ds = DermoscopyDataset([r.path for r in data.rows_of("train")], data.targets_of("train"), spec, augment, cache,
                                 config.seed)
    val_rows = data.rows_of("val")
    val_ds = DermoscopyDataset([r.path for r in val_rows], data.targets_of("val"), spec, None, cache)
    class_weight = _class_weight(data.targets_of("train"), len(label_sets(config.task)))
    sampler = _train_sampler(config, data, class_weight, dist.rank, dist.world)
    criterion = SetLoss(label_set_members(config.task), len(classes), config.label_smoothing,
                        class_weight if config.balance == "loss" else None).to(device)
    per_rank_batch = max(1, config.batch_size // dist.world)
    train_loader = data_loader(train_ds, per_rank_batch, config.workers, sampler=sampler, seed=config.seed)
    net = dist.wrap(model)

    optimizer, scheduler = _optimiser(config, trainable, head_ids, len(train_loader))
    opt = _Optimisation(optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=amp), criterion,
                        WeightAverage(model, config.ema_decay) if config.ema_decay else None)
    malignant_idx = [classes.index(c) for c in malignant_classes]

    progress = _Progress()
    first_epoch, resumed_from = 1, None
    last_path = out / "last.pt"
    if config.resume and last_path.is_file():
        last_epoch, elapsed = _resume(last_path, config, model, opt, train_ds, progress)
        first_epoch = resumed_from = last_epoch + 1
        started = time.time() - elapsed
        echo(f"resuming after epoch {last_epoch} from {last_path} ({elapsed / 60:.1f} min already spent)")
    echo(f"training on {device} ({torch.get_num_threads()} threads{f', {dist.world} processes' if dist.world > 1 else ''}), "
         f"{len(train_ds)} train / {len(val_ds)} val images, {config.epochs} epochs max, batch {config.batch_size}")
    stopped_by = "epochs"
    for epoch in range(first_epoch, config.epochs + 1):
        t_epoch = time.time()
        if config.max_minutes and progress.history:
            history = progress.history
            full_epochs = [h["seconds"] for h in history if not h["head_only"]] or [h["seconds"] for h in history]
            if dist.agree(time.time() - started + max(full_epochs) > config.max_minutes * 60):
                echo(f"time budget: stopping before epoch {epoch} ({config.max_minutes:g} min budget)")
                stopped_by = "time budget"
                break
        head_only = epoch <= config.freeze_backbone_epochs
        for p in trainable:
            p.requires_grad_(not head_only or id(p) in head_ids)
        sampler.set_epoch(epoch)
        # the augmentation stream of an epoch depends only on (seed, epoch): resumable, and each DDP rank differs
        train_ds._calls = (epoch * 1_000_003 + dist.rank) * 10_000_019
        model.train()
        set_frozen_eval(frozen)
        if head_only:
            model.eval()
            head.train()
        losses = _run_batches(net, train_loader, opt, config, device, amp, epoch, echo)
        record: dict[str, Any] = {"epoch": epoch, "train_loss": losses["train_loss"], "head_only": head_only,
                                  "lr": optimizer.param_groups[0]["lr"], "data_seconds": losses["data_seconds"],
                                  "step_seconds": losses["step_seconds"]}
        improved = False
        if dist.is_main:
            live = opt.ema.swap_in() if opt.ema is not None else None  # val (and the kept state) use the average
            _, figures = _val_scores(model, val_ds, val_rows, malignant_idx, device, config, amp)
            record.update(figures)
            improved = progress.note_val_score(figures["val_score"], epoch)
            if improved:
                progress.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
            if live is not None:
                model.load_state_dict(live)
        record["seconds"] = round(time.time() - t_epoch, 1)
        progress.history.append(record)
        if dist.is_main:
            echo(_epoch_line(epoch, record, improved))
            (out / "history.json").write_text(json.dumps(progress.history, indent=1))
            save_atomic(_last_state(config, epoch, model, opt, train_ds, progress, time.time() - started), last_path)
        if dist.agree(progress.stale >= config.patience and not head_only):
            echo(f"early stop: no better val score for {config.patience} epochs")
            stopped_by = "early stopping"
            break
    train_seconds = time.time() - started
    if not dist.is_main:
        dist.close()
        return TrainResult(out / "checkpoint.pt", {}, None)  # type: ignore[arg-type]
    dist.close()
    if progress.best_state is None:
        raise click.ClickException("validation AUC could not be computed in any epoch")
    model.load_state_dict(progress.best_state)
    model.eval()
    return finish_run(TrainedRun(
        config, model, progress.best_state, data, spec, cache, augment, classes, malignant_classes, device, amp,
        history=progress.history, best_epoch=progress.best_epoch, best_auc=progress.best_auc, stopped_by=stopped_by,
        resumed_from=resumed_from, class_weight=class_weight, provenance_weights=provenance_weights,
        train_seconds=train_seconds, started=started), echo)
