"""The end of a training run: test-time flips and threshold chosen on val, then test scored once.

Order matters and is the point of this module: the epoch (trainer) and then the test-time flips and the
operating threshold are fixed on validation images only; the test split is decoded and scored after
that, once, and its figures are reported - never used to choose anything.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import subprocess
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from dermsort.runtime.metadata import ModelMetadata, Provenance, Validation

from . import metrics
from .checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, save_atomic
from .data import Row
from .dataset import DermoscopyDataset
from .models import TTA_MODES, with_tta
from .run import TrainedRun, TrainResult
from .scoring import p_malignant, predict_probabilities

Echo = Callable[[str], None]
REPO = Path(__file__).resolve().parents[1]


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


def validation_from_report(report: dict[str, Any], split: str, datasets: list[str], target: float,
                           **extra: Any) -> Validation:
    return Validation(split=split, datasets=datasets, n_images=report["n_images"], n_malignant=report["n_malignant"],
                      target_sensitivity=target, sensitivity=report["sensitivity"],
                      sensitivity_ci=report["sensitivity_ci"], specificity=report["specificity"],
                      specificity_ci=report["specificity_ci"], work_reduction=report["work_reduction"],
                      auc=report["auc"], auc_ci=report["auc_ci"], **extra)


def _scores_dict(rows: Sequence[Row], p: np.ndarray, probabilities: np.ndarray | None = None) -> dict[str, list]:
    out = {"p_malignant": [float(x) for x in p], "malignant": [int(r.malignant) for r in rows],
           "image_id": [r.image_id for r in rows], "dataset": [r.dataset for r in rows], "dx": [r.dx for r in rows]}
    if probabilities is not None:
        out["probabilities"] = np.asarray(probabilities, dtype=float).round(6).tolist()
    return out


def _score(run: TrainedRun, net: nn.Module, rows: Sequence[Row], targets: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(p_malignant, class probabilities) of ``net`` on ``rows`` through the run's preprocessing and cache."""
    config = run.config
    ds = DermoscopyDataset([r.path for r in rows], targets, run.spec, None, run.cache)
    prob = predict_probabilities(net, ds, run.device, config.batch_size * 2, config.workers, run.amp)
    return p_malignant(prob, run.malignant_idx), prob


def _tta_on_val(run: TrainedRun, model: nn.Module, echo: Echo) -> tuple[dict[str, Any], dict[str, tuple]]:
    """Every test-time flip mode measured on val: (figures per mode, (p_malignant, probabilities) per mode)."""
    val_rows = run.data.rows_of("val")
    val_y = np.array([int(r.malignant) for r in val_rows])
    val_sets = np.array([r.dataset for r in val_rows])
    tta_figures, val_by_mode = {}, {}
    for mode in TTA_MODES:
        p, prob = _score(run, with_tta(model, mode).eval(), val_rows, run.data.targets_of("val"))
        val_by_mode[mode] = (p, prob)
        tta_figures[mode] = {"val_auc": metrics.auc_score(val_y, p),
                             "val_auc_sets": metrics.set_aucs(val_y, p, val_sets, run.config.min_set_malignant)}
        echo(f"val with test-time flips {mode!r}: AUC pooled {tta_figures[mode]['val_auc']:.4f}, per set "
             + ", ".join(f"{k} {v:.4f}" for k, v in tta_figures[mode]["val_auc_sets"].items() if v is not None))
    return tta_figures, val_by_mode


def _training_data(run: TrainedRun) -> list[str]:
    """One provenance line per data set: images, malignant, and how many went to each split."""
    lines = []
    for name in sorted({r.dataset for r in run.data.rows}):
        members = [(r, s) for r, s in zip(run.data.rows, run.data.splits) if r.dataset == name]
        by_split = {s: sum(1 for _, x in members if x == s) for s in ("train", "val", "test")}
        lines.append(f"{name}: {len(members)} images ({sum(r.malignant for r, _ in members)} malignant); "
                     f"train {by_split['train']} / val {by_split['val']} / test {by_split['test']}")
    return lines


def _metadata(run: TrainedRun, threshold: float, basis: dict[str, Any], tta_figures: dict[str, Any],
              test_report: dict[str, Any] | None, test_rows: Sequence[Row]) -> ModelMetadata:
    """The model's metadata: identity, threshold, the test validation (or none), provenance and its recipe."""
    config = run.config
    n_train_mal = sum(r.malignant for r in run.data.rows_of("train"))
    created = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    model_id = f"dermsort-{config.architecture}-{dt.date.today():%Y%m%d}-{uuid.uuid4().hex[:8]}"
    # every model dermsort trains is a development model: retrospective public data, no prospective or
    # clinical validation; the reason says what else limits it
    development = True
    development_reason = ("validated only retrospectively on public data sets (see its model card), not clinically"
                          + (f"; trained on {len(run.data.part['train'])} images with only {n_train_mal} malignant, so its "
                             "figures have wide confidence intervals" if n_train_mal < 1000 else ""))
    recipe = {"config": asdict(config), "augment": asdict(run.augment), "task": config.task, "device": str(run.device),
              "amp": run.amp, "torch": str(torch.__version__), "python": platform.python_version(),
              "threads": torch.get_num_threads(), "epochs_run": len(run.history), "stopped_by": run.stopped_by,
              "resumed_from_epoch": run.resumed_from, "best_epoch": run.best_epoch, "best_val_score": run.best_auc,
              "selection": f"epoch with the best val {config.select_on} AUC", "class_weight": run.class_weight.tolist(),
              "tta": config.tta, "tta_val": tta_figures,
              "split": {"mode": config.split_mode, "seed": config.seed, "folds": config.folds, "fold": config.fold,
                        "grouped_by": "lesion_id and patient_id (union-find), stratified", "counts": run.data.summary},
              "threshold_rule": basis["rule"], "train_seconds": round(run.train_seconds, 1),
              "development_model_reason": development_reason}
    if test_report:
        pooled = test_report.get("pooled_sets", test_report["pooled"])
        validation = validation_from_report(pooled, "test", list(test_report.get("pooled_sets", {}).get("sets", [])) or
                                            sorted({r.dataset for r in test_rows}), config.target_sensitivity,
                                            threshold_basis=basis,
                                            per_dataset={k: _brief(v) for k, v in test_report["per_dataset"].items()},
                                            per_diagnosis=pooled["per_diagnosis"])
    else:
        validation = Validation(split="none", threshold_basis=basis)
    intended = "Triage aid for dermoscopy images; not a diagnosis and not a medical device."
    metadata = ModelMetadata(
        model_id=model_id, architecture=config.architecture, classes=run.classes,
        malignant_classes=run.malignant_classes, threshold=threshold, preprocess=run.spec, output="probabilities",
        input_name="input", output_name="probabilities", validation=validation,
        provenance=Provenance(training_data=_training_data(run), code_version=git_commit(),
                              pretrained=run.provenance_weights, created=created, recipe=recipe),
        development_model=development,
        intended_use=intended + (f" Development model: {development_reason}." if development else ""))
    ModelMetadata.from_dict(metadata.to_dict())  # the schema's own checks, before anything is written
    return metadata


def _plots(out: Path, model_id: str, what: str, val: tuple[np.ndarray, np.ndarray], test_rows: Sequence[Row],
           test_p: np.ndarray, decisions: dict[str, Any], split: str) -> None:
    """roc.png (test per data set, val pooled) and confusion.png (the reported split, pooled)."""
    curves: dict[str, tuple] = {}
    if test_rows:
        sets = np.array([r.dataset for r in test_rows])
        y = np.array([int(r.malignant) for r in test_rows])
        for name in sorted(set(sets.tolist())):
            curves[f"test {name}"] = (y[sets == name], test_p[sets == name])
    curves["val (pooled)"] = val
    metrics.plot_roc(str(out / "roc.png"), curves, None,
                     title=f"{model_id}\n{what}, " + ("test and val splits" if test_rows else "val split"))
    metrics.plot_confusion(str(out / "confusion.png"), decisions, title=f"{what}, {split} split, pooled")


def finish_run(run: TrainedRun, echo: Echo) -> TrainResult:
    """Test-time flips and threshold fixed on val, then test scored once; checkpoint.pt, metrics.json, plots."""
    config = run.config
    out = Path(config.out)
    model = run.model.to(memory_format=torch.contiguous_format)

    # ---- test-time flips: measured on val for every mode, the configured one is shipped
    val_rows = run.data.rows_of("val")
    val_y = np.array([int(r.malignant) for r in val_rows])
    val_sets = np.array([r.dataset for r in val_rows])
    tta_figures, val_by_mode = _tta_on_val(run, model, echo)
    shipped = with_tta(model, config.tta).eval()
    val_p, val_prob = val_by_mode[config.tta]

    # ---- operating threshold on val only: >= target sensitivity on every large val set and pooled
    threshold, basis = metrics.choose_threshold_sets(val_y, val_p, val_sets, config.target_sensitivity,
                                                     config.min_set_malignant)
    basis_sets = [k for k in basis["sets"] if k != "pooled"]
    val_report = metrics.triage_report(val_y, val_p, val_sets, [r.dx for r in val_rows], threshold,
                                       pooled_sets=basis_sets, n_boot=config.n_boot, seed=config.seed)
    echo(f"best epoch {run.best_epoch} (val score {run.best_auc:.4f}); threshold {threshold:.4g} "
         f"(binding: {basis['binding']}; {basis['rule']})")
    echo(metrics.format_triage(val_report, "val "))

    # ---- test: first time these images are decoded or scored
    test_rows = run.data.rows_of("test")
    test_report: dict[str, Any] | None = None
    test_p, test_prob = np.zeros(0), None
    if test_rows:
        test_p, test_prob = _score(run, shipped, test_rows, run.data.targets_of("test"))
        test_y = np.array([int(r.malignant) for r in test_rows])
        test_report = metrics.triage_report(test_y, test_p, [r.dataset for r in test_rows], [r.dx for r in test_rows],
                                            threshold, pooled_sets=basis_sets, n_boot=config.n_boot, seed=config.seed)
        echo(metrics.format_triage(test_report, "test "))

    # ---- metadata, checkpoint, reports
    metadata = _metadata(run, threshold, basis, tta_figures, test_report, test_rows)
    checkpoint = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "architecture": config.architecture,
                  "num_classes": len(run.classes), "state_dict": run.best_state, "tta": config.tta,
                  "metadata": metadata.to_dict(),
                  "val": _scores_dict(val_rows, val_p, val_prob), "test": _scores_dict(test_rows, test_p, test_prob)}
    ckpt_path = out / "checkpoint.pt"
    save_atomic(checkpoint, ckpt_path)
    (out / "last.pt").unlink(missing_ok=True)  # the run is complete: nothing left to resume

    result = {"model_id": metadata.model_id, "architecture": config.architecture, "task": config.task,
              "threshold": threshold, "threshold_basis": basis, "target_sensitivity": config.target_sensitivity,
              "best_epoch": run.best_epoch, "best_val_score": run.best_auc, "tta": config.tta, "tta_val": tta_figures,
              "val": val_report, "test": test_report, "split": run.data.summary, "history": run.history,
              "train_seconds": round(run.train_seconds, 1), "development_model": metadata.development_model}
    result["total_seconds"] = round(time.time() - run.started, 1)
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    what = f"torch checkpoint {ckpt_path.name}"
    _plots(out, metadata.model_id, what, (val_y, val_p), test_rows, test_p, (test_report or val_report)["pooled"],
           "test" if test_report else "val")
    echo(f"wrote {ckpt_path} ({ckpt_path.stat().st_size / 1e6:.1f} MB), metrics.json, roc.png, confusion.png "
         f"in {time.time() - run.started:.0f} s")
    return TrainResult(ckpt_path, result, metadata)


def _brief(report: dict[str, Any]) -> dict[str, Any]:
    keys = ("n_images", "n_malignant", "sensitivity", "sensitivity_ci", "specificity", "specificity_ci",
            "work_reduction", "auc", "auc_ci")
    return {k: report[k] for k in keys}
