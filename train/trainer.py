"""Training: read sources -> grouped split -> fine-tune -> pick epoch on val AUC -> threshold on val -> test figures.

The test split is decoded and scored only after the epoch and the threshold are fixed.
Outputs in ``out/``: checkpoint.pt (weights + ModelMetadata + val/test scores), metrics.json,
roc.png, confusion.png, history.json.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import math
import os
import platform
import random
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import click
import numpy as np
import torch
from torch import nn

from dermsort.runtime.metadata import ModelMetadata, Provenance, Validation

from . import metrics
from .data import Row, class_index, read_sources, task_classes
from .dataset import Augment, DermoscopyDataset, ImageCache
from .models import (build_model, classifier_of, count_stages, default_preprocess, freeze_stages,
                     pretrained_provenance, set_frozen_eval)
from .split import assert_no_leak, assign_splits, split_summary, subsample

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "dermsort-checkpoint"
CHECKPOINT_VERSION = 1
REPO = Path(__file__).resolve().parents[1]
Echo = Callable[[str], None]


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
    #: class imbalance: "loss" (class-weighted cross-entropy), "sampler" (weighted sampling) or "none"
    balance: str = "loss"
    workers: int = 0
    threads: int | None = None
    n_boot: int = 2000
    augment: dict[str, Any] = field(default_factory=dict)
    #: continue from ``out/last.pt`` (written after every epoch) when a run was interrupted
    resume: bool = False


#: settings that may differ between an interrupted run and its resumption
_RESUMABLE_CHANGES = {"resume", "max_minutes", "threads", "workers", "n_boot"}


@dataclass
class TrainResult:
    checkpoint: Path
    metrics: dict[str, Any]
    metadata: ModelMetadata


# --------------------------------------------------------------------------- checkpoint I/O

def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[nn.Module, ModelMetadata, dict]:
    """A checkpoint.pt written by ``dermsort train`` -> (model in eval mode, its metadata, the raw dict)."""
    from .models import build_model as _build

    ckpt = torch.load(os.fspath(path), map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a dermsort checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    if int(ckpt.get("version", 0)) != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {ckpt.get('version')} (this dermsort reads {CHECKPOINT_VERSION})")
    metadata = ModelMetadata.from_dict(ckpt["metadata"])
    model = _build(ckpt["architecture"], int(ckpt["num_classes"]), pretrained=False)
    model.load_state_dict(ckpt["state_dict"], strict=True)
    model.eval()
    return model, metadata, ckpt


# --------------------------------------------------------------------------- helpers

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise click.ClickException("--device cuda: no CUDA device is visible to torch here")
    return torch.device(name)


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


def git_commit(repo: Path = REPO) -> str:
    """The repository's commit (+ "-dirty" with uncommitted changes), or "" outside git. Read-only."""
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "--no-optional-locks", "-C", str(repo), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def _loader(dataset: DermoscopyDataset, batch_size: int, workers: int, shuffle: bool = False,
            sampler: torch.utils.data.Sampler | None = None, seed: int = 0) -> torch.utils.data.DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None,
                                       sampler=sampler, num_workers=workers, generator=generator,
                                       persistent_workers=workers > 0, drop_last=False)


@torch.no_grad()
def predict_probabilities(model: nn.Module, dataset: DermoscopyDataset, device: torch.device, batch_size: int = 64,
                          workers: int = 0, amp: bool = False) -> np.ndarray:
    """Softmax class probabilities for every sample of ``dataset`` (in order)."""
    model.eval()
    out = []
    for batch, _ in _loader(dataset, batch_size, workers):
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=amp and device.type == "cuda"):
            logits = model(batch.to(device, non_blocking=True))
        out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.part")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _p_malignant(probabilities: np.ndarray, malignant_idx: Sequence[int]) -> np.ndarray:
    return probabilities[:, list(malignant_idx)].sum(axis=1)


def _class_counts(targets: Sequence[int], n_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(targets, dtype=int), minlength=n_classes).astype(float)


def _scores_dict(rows: Sequence[Row], p_malignant: np.ndarray) -> dict[str, list]:
    return {"p_malignant": [float(p) for p in p_malignant], "malignant": [int(r.malignant) for r in rows],
            "image_id": [r.image_id for r in rows], "dataset": [r.dataset for r in rows]}


def validation_from_report(report: dict[str, Any], split: str, datasets: list[str], target: float) -> Validation:
    return Validation(split=split, datasets=datasets, n_images=report["n_images"], n_malignant=report["n_malignant"],
                      target_sensitivity=target, sensitivity=report["sensitivity"],
                      sensitivity_ci=report["sensitivity_ci"], specificity=report["specificity"],
                      specificity_ci=report["specificity_ci"], work_reduction=report["work_reduction"],
                      auc=report["auc"], auc_ci=report["auc_ci"])


# --------------------------------------------------------------------------- the run

def train(config: TrainConfig, echo: Echo = click.echo) -> TrainResult:
    """Run one training as configured; returns the checkpoint path, the metrics and the metadata."""
    started = time.time()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    if device.type == "cpu":
        keep_freed_memory()
    amp = config.amp and device.type == "cuda"
    if config.amp and not amp:
        echo("note: --amp only applies on CUDA; training in float32 on the CPU")

    # ---- data and split
    classes, malignant_classes = task_classes(config.task)
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

    # ---- model
    spec = default_preprocess(config.architecture, config.image_size)
    model = build_model(config.architecture, len(classes), config.pretrained)
    provenance_weights = pretrained_provenance(config.architecture, config.pretrained)
    echo(f"model {config.architecture}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters; "
         f"start: {provenance_weights.get('package') or provenance_weights['source']}")
    frozen = freeze_stages(model, config.architecture, config.freeze_stages)
    if frozen:
        echo(f"first {len(frozen)} of {count_stages(model, config.architecture)} stages frozen for the whole run")
    model.to(device)
    head = classifier_of(model, config.architecture)
    trainable = [p for p in model.parameters() if p.requires_grad]
    head_ids = {id(p) for p in head.parameters()}

    # ---- data pipeline (train pixels == runtime pixels: see dataset.py)
    cache = ImageCache(spec)
    t0 = time.time()
    cache.warm([rows[i].path for i in part["train"] + part["val"]], threads=config.threads or os.cpu_count() or 1)
    echo(f"decoded {len(cache)} train/val images in {time.time() - t0:.0f} s ({cache.nbytes() / 1e6:.0f} MB cached)")
    augment = Augment(**config.augment)
    train_targets = [targets[i] for i in part["train"]]
    train_ds = DermoscopyDataset([rows[i].path for i in part["train"]], train_targets, spec, augment, cache, config.seed)
    val_rows = [rows[i] for i in part["val"]]
    val_ds = DermoscopyDataset([r.path for r in val_rows], [targets[i] for i in part["val"]], spec, None, cache)
    counts = _class_counts(train_targets, len(classes))
    present = counts > 0
    class_weight = np.where(present, counts.sum() / (present.sum() * np.maximum(counts, 1)), 0.0)
    sampler = None
    if config.balance == "sampler":
        weights = torch.as_tensor([class_weight[t] for t in train_targets], dtype=torch.double)
        sampler = torch.utils.data.WeightedRandomSampler(weights, len(train_targets),
                                                         generator=torch.Generator().manual_seed(config.seed))
    loss_weight = torch.as_tensor(class_weight, dtype=torch.float32, device=device) if config.balance == "loss" else None
    criterion = nn.CrossEntropyLoss(weight=loss_weight)
    train_loader = _loader(train_ds, config.batch_size, config.workers, shuffle=True, sampler=sampler, seed=config.seed)

    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    total_steps = max(1, config.epochs * len(train_loader))
    warmup = min(len(train_loader), total_steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (step + 1) / max(1, warmup) if step < warmup
        else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup))))
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    malignant_idx = [classes.index(c) for c in malignant_classes]
    val_y = np.array([int(r.malignant) for r in val_rows])

    best_auc, best_epoch, best_state, stale = -1.0, -1, None, 0
    history: list[dict[str, Any]] = []
    first_epoch, resumed_from = 1, None
    last_path = out / "last.pt"
    if config.resume and last_path.is_file():
        state = torch.load(last_path, map_location="cpu", weights_only=True)
        changed = {k for k, v in asdict(config).items()
                   if k not in _RESUMABLE_CHANGES and state["config"].get(k) != (list(v) if isinstance(v, tuple) else v)}
        if changed:
            raise click.ClickException(f"cannot resume {last_path}: {', '.join(sorted(changed))} differ from that run")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        train_loader.generator.set_state(state["loader_rng"])
        torch.set_rng_state(state["torch_rng"])
        train_ds._calls = state["augment_calls"]
        history, stale = state["history"], state["stale"]
        best_auc, best_epoch, best_state = state["best_auc"], state["best_epoch"], state["best_state"]
        first_epoch = resumed_from = state["epoch"] + 1
        started = time.time() - state["elapsed"]
        echo(f"resuming after epoch {state['epoch']} from {last_path} ({state['elapsed'] / 60:.1f} min already spent)")
    echo(f"training on {device} ({torch.get_num_threads()} threads), {len(train_ds)} train / {len(val_ds)} val images, "
         f"{config.epochs} epochs max, batch {config.batch_size}")
    stopped_by = "epochs"
    for epoch in range(first_epoch, config.epochs + 1):
        t_epoch = time.time()
        if config.max_minutes and history:
            full_epochs = [h["seconds"] for h in history if not h["head_only"]] or [h["seconds"] for h in history]
            if time.time() - started + max(full_epochs) > config.max_minutes * 60:
                echo(f"time budget: stopping before epoch {epoch} ({config.max_minutes:g} min budget)")
                stopped_by = "time budget"
                break
        head_only = epoch <= config.freeze_backbone_epochs
        for p in trainable:
            p.requires_grad_(not head_only or id(p) in head_ids)
        model.train()
        set_frozen_eval(frozen)
        if head_only:
            model.eval()
            head.train()
        running, seen, last_note = 0.0, 0, time.time()
        interactive = click.get_text_stream("stderr").isatty()
        label = f"epoch {epoch}/{config.epochs}" + (" (head only)" if head_only else "")
        with click.progressbar(train_loader, label=label, file=click.get_text_stream("stderr")) as batches:
            for images, labels in batches:
                images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=amp):
                    loss = criterion(model(images), labels)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                running += float(loss.detach()) * len(labels)
                seen += len(labels)
                if not interactive and time.time() - last_note > 60:
                    # a log file gets no progress bar: one line a minute instead
                    last_note = time.time()
                    echo(f"  {seen}/{len(train_ds)} images, loss {running / seen:.4f}, {time.time() - t_epoch:.0f} s")
        probabilities = predict_probabilities(model, val_ds, device, config.batch_size * 2, config.workers, amp)
        val_p = _p_malignant(probabilities, malignant_idx)
        val_auc = metrics.auc_score(val_y, val_p)
        val_loss = float(nn.functional.nll_loss(torch.log(torch.as_tensor(probabilities).clamp_min(1e-12)),
                                                torch.as_tensor([targets[i] for i in part["val"]])))
        record = {"epoch": epoch, "train_loss": running / max(1, seen), "val_loss": val_loss, "val_auc": val_auc,
                  "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.time() - t_epoch, 1), "head_only": head_only}
        history.append(record)
        improved = val_auc is not None and val_auc > best_auc + 1e-6
        if improved:
            best_auc, best_epoch, stale = val_auc, epoch, 0
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        else:
            stale += 1
        echo(f"epoch {epoch}: train loss {record['train_loss']:.4f}  val loss {val_loss:.4f}  "
             f"val AUC {val_auc if val_auc is None else round(val_auc, 4)}{'  *best*' if improved else ''}  "
             f"({record['seconds']:.0f} s)")
        (out / "history.json").write_text(json.dumps(history, indent=1))
        _save_atomic({"config": asdict(config), "epoch": epoch, "model": model.state_dict(),
                      "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                      "scaler": scaler.state_dict(), "loader_rng": train_loader.generator.get_state(),
                      "torch_rng": torch.get_rng_state(), "augment_calls": train_ds._calls, "history": history,
                      "stale": stale, "best_auc": best_auc, "best_epoch": best_epoch, "best_state": best_state,
                      "elapsed": time.time() - started}, last_path)
        if stale >= config.patience and not head_only:
            echo(f"early stop: no better val AUC for {config.patience} epochs")
            stopped_by = "early stopping"
            break
    train_seconds = time.time() - started
    if best_state is None:
        raise click.ClickException("validation AUC could not be computed in any epoch")
    model.load_state_dict(best_state)
    model.eval()

    # ---- threshold on val (test untouched so far)
    val_p = _p_malignant(predict_probabilities(model, val_ds, device, config.batch_size * 2, config.workers, amp),
                         malignant_idx)
    threshold = metrics.choose_threshold(val_y, val_p, config.target_sensitivity)
    val_report = metrics.binary_report(val_y, val_p, threshold, n_boot=config.n_boot, seed=config.seed)
    echo(f"best epoch {best_epoch} (val AUC {best_auc:.4f}); threshold {threshold:.4g} for val sensitivity "
         f">= {config.target_sensitivity:.0%}")
    echo(metrics.format_report(val_report, "val:  "))

    # ---- test: first time these images are decoded or scored
    test_rows = [rows[i] for i in part["test"]]
    test_report: dict[str, Any] | None = None
    test_p = np.zeros(0)
    if test_rows:
        test_ds = DermoscopyDataset([r.path for r in test_rows], [targets[i] for i in part["test"]], spec, None, cache)
        test_p = _p_malignant(predict_probabilities(model, test_ds, device, config.batch_size * 2, config.workers, amp),
                              malignant_idx)
        test_y = np.array([int(r.malignant) for r in test_rows])
        test_report = metrics.binary_report(test_y, test_p, threshold, n_boot=config.n_boot, seed=config.seed)
        echo(metrics.format_report(test_report, "test: "))
    per_dataset = (metrics.per_group_reports([int(r.malignant) for r in test_rows], test_p,
                                             [r.dataset for r in test_rows], threshold, n_boot=config.n_boot,
                                             seed=config.seed) if test_rows else {})
    for name, report in per_dataset.items():
        echo(metrics.format_report(report, f"test {name}: "))

    # ---- metadata, checkpoint, reports
    n_train_mal = sum(rows[i].malignant for i in part["train"])
    created = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    model_id = f"dermsort-{config.architecture}-{dt.date.today():%Y%m%d}-{uuid.uuid4().hex[:8]}"
    datasets = sorted({r.dataset for r in rows})
    training_data = []
    for name in datasets:
        members = [(r, s) for r, s in zip(rows, splits) if r.dataset == name]
        by_split = {s: sum(1 for _, x in members if x == s) for s in ("train", "val", "test")}
        training_data.append(f"{name}: {len(members)} images ({sum(r.malignant for r, _ in members)} malignant); "
                             f"train {by_split['train']} / val {by_split['val']} / test {by_split['test']}")
    development_reason = (f"trained on {len(part['train'])} images with {n_train_mal} malignant: far too few for a "
                          "clinical model; figures have wide confidence intervals")
    recipe = {"config": asdict(config), "augment": asdict(augment), "task": config.task, "device": str(device),
              "amp": amp, "torch": str(torch.__version__), "python": platform.python_version(),
              "threads": torch.get_num_threads(), "epochs_run": len(history), "stopped_by": stopped_by,
              "resumed_from_epoch": resumed_from, "best_epoch": best_epoch,
              "best_val_auc": best_auc, "class_weight": class_weight.tolist(),
              "split": {"mode": config.split_mode, "seed": config.seed, "folds": config.folds, "fold": config.fold,
                        "grouped_by": "lesion_id and patient_id (union-find), stratified", "counts": summary},
              "threshold_rule": f"largest threshold with val sensitivity >= {config.target_sensitivity}",
              "train_seconds": round(train_seconds, 1), "development_model_reason": development_reason}
    metadata = ModelMetadata(
        model_id=model_id, architecture=config.architecture, classes=classes, malignant_classes=malignant_classes,
        threshold=threshold, preprocess=spec, output="probabilities", input_name="input", output_name="probabilities",
        validation=(validation_from_report(test_report, "test", sorted({r.dataset for r in test_rows}),
                                           config.target_sensitivity) if test_report else Validation(split="none")),
        provenance=Provenance(training_data=training_data, code_version=git_commit(),
                              pretrained=provenance_weights, created=created, recipe=recipe),
        development_model=True,
        intended_use=f"Triage aid for dermoscopy images; not a diagnosis. Development model: {development_reason}.")
    ModelMetadata.from_dict(metadata.to_dict())  # the schema's own checks, before anything is written
    checkpoint = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "architecture": config.architecture,
                  "num_classes": len(classes), "state_dict": best_state, "metadata": metadata.to_dict(),
                  "val": _scores_dict(val_rows, val_p), "test": _scores_dict(test_rows, test_p)}
    ckpt_path = out / "checkpoint.pt"
    _save_atomic(checkpoint, ckpt_path)
    last_path.unlink(missing_ok=True)  # the run is complete: nothing left to resume

    result = {"model_id": model_id, "architecture": config.architecture, "task": config.task, "threshold": threshold,
              "target_sensitivity": config.target_sensitivity, "best_epoch": best_epoch, "best_val_auc": best_auc,
              "val": val_report, "test": test_report, "test_per_dataset": per_dataset, "split": summary,
              "history": history, "train_seconds": round(train_seconds, 1),
              "total_seconds": round(time.time() - started, 1), "development_model": True}
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    curves = {}
    if test_rows:
        curves["test"] = ([int(r.malignant) for r in test_rows], test_p)
    curves["val"] = (val_y, val_p)
    metrics.plot_roc(str(out / "roc.png"), curves, threshold, title=f"{model_id}")
    metrics.plot_confusion(str(out / "confusion.png"), test_report or val_report,
                           title="test decisions" if test_report else "val decisions")
    echo(f"wrote {ckpt_path} ({ckpt_path.stat().st_size / 1e6:.1f} MB), metrics.json, roc.png, confusion.png "
         f"in {time.time() - started:.0f} s")
    return TrainResult(ckpt_path, result, metadata)
