"""Evaluate a checkpoint or an exported bundle on labelled data, through the runtime's preprocessing.

A bundle (folder, manifest or artifact file) runs through ``dermsort.runtime`` backends, so the
figures are those of the deployed path; a checkpoint runs in PyTorch eager mode.
"""

from __future__ import annotations

import csv
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import click
import numpy as np

from dermsort.runtime.metadata import ModelMetadata
from dermsort.runtime.preprocess import UnreadableImage, preprocess_file

from . import metrics
from .data import HAM7_CLASSES, Row, class_index, read_sources
from .split import assign_splits

Echo = Callable[[str], None]


@dataclass
class Scorer:
    """p_malignant for a batch of preprocessed images, plus what the model says about itself."""

    metadata: ModelMetadata
    threshold: float
    describe: dict[str, Any]
    #: preprocessed batch -> (P(malignant), not-dermoscopy gate scores or None for a model without a gate)
    score: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]


#: the clinic-like dermoscopy sets (dermatology clinics, not screening): also reported pooled on their own
CLINIC_SETS = ("ham10000", "isic2019")


def checkpoint_scorer(path: Path, device: str = "cpu") -> Scorer:
    import torch

    from .checkpoint import load_checkpoint
    from .scoring import resolve_device

    torch_device = resolve_device(device)
    model, metadata, _ = load_checkpoint(path, map_location=torch_device)
    model.to(torch_device)
    idx = metadata.malignant_indices()

    n_classes = len(metadata.classes)

    @torch.no_grad()
    def score(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        out = model(torch.from_numpy(batch).to(torch_device))
        if getattr(model, "outputs_probabilities", False):  # a gated model: probabilities + the gate's score
            out = out.cpu().numpy()
            return out[:, idx].sum(axis=1), out[:, n_classes]
        probabilities = torch.softmax(out, dim=1).cpu().numpy()
        return probabilities[:, idx].sum(axis=1), None

    return Scorer(metadata, metadata.threshold, {"backend": "torch", "artifact": str(path), "device": str(torch_device)},
                  score)


def bundle_scorer(path: Path, backend: str = "onnxruntime", artifact_name: str | None = None) -> Scorer:
    from dermsort.runtime.backends import create_backend
    from dermsort.runtime.bundle import load_bundle

    bundle, named = load_bundle(path)
    name = artifact_name or named
    if name:
        artifact = bundle.get(name)
    else:
        matches = [a for a in bundle.artifacts if a.path == bundle.reference] or \
                  [a for a in bundle.artifacts if a.format == "onnx"] or bundle.artifacts
        artifact = matches[0]
    bundle.verify(artifact)
    runner = create_backend(backend, bundle, artifact).load()

    def score(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        probabilities, gate = runner.infer(batch)
        return runner.p_malignant(probabilities), gate

    return Scorer(bundle.metadata, artifact.threshold, runner.describe(), score)


def open_model(path: str | os.PathLike, backend: str = "onnxruntime", artifact: str | None = None,
               device: str = "cpu") -> Scorer:
    """A checkpoint.pt, or a bundle folder / manifest.json / artifact file."""
    path = Path(path)
    if path.is_file() and path.suffix in (".pt", ".pth") and not (path.parent / "manifest.json").is_file():
        return checkpoint_scorer(path, device)
    if path.is_file() and path.suffix in (".pt", ".pth") and backend == "onnxruntime":
        backend = "torch"
    return bundle_scorer(path, backend, artifact)


def select_rows(data: Sequence[str], split: str, split_mode: str = "given", seed: int = 0, folds: int | None = None,
                fold: int = 0, task: str = "binary", echo: Echo = click.echo) -> list[Row]:
    """The labelled rows of ``split`` ("all" for every row), split exactly as training would for ``task``."""
    rows = read_sources(data, echo=echo)
    if split == "all":
        return rows
    # training stratifies by its task's classes and leaves out rows without one: do the same
    rows = [r for r in rows if class_index(r, task) is not None]
    splits = assign_splits(rows, [class_index(r, task) for r in rows], mode=split_mode, seed=seed, folds=folds,
                           fold=fold)
    chosen = [r for r, s in zip(rows, splits) if s == split]
    if not chosen:
        raise click.ClickException(f"no images in the {split} split of {', '.join(map(str, data))}")
    return chosen


def score_rows(scorer: Scorer, rows: Sequence[Any], batch_size: int = 32, threads: int | None = None
               ) -> tuple[list[Any], np.ndarray, np.ndarray | None, list[str]]:
    """Preprocess (runtime path) and score items with a ``path``; returns the ones that decoded, their
    p_malignant, their gate scores (None without a gate) and the failures."""
    spec = scorer.metadata.preprocess
    kept: list[Any] = []
    scores: list[np.ndarray] = []
    gates: list[np.ndarray] = []
    failures: list[str] = []

    def load(row: Any):
        try:
            return preprocess_file(row.path, spec)[0]
        except (UnreadableImage, OSError) as exc:
            return exc

    with ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool, \
            click.progressbar(length=len(rows), label="scoring", file=click.get_text_stream("stderr")) as bar:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            arrays = list(pool.map(load, chunk))
            good = [(r, a) for r, a in zip(chunk, arrays) if isinstance(a, np.ndarray)]
            failures += [f"{r.path}: {a}" for r, a in zip(chunk, arrays) if not isinstance(a, np.ndarray)]
            if good:
                p, g = scorer.score(np.stack([a for _, a in good]))
                scores.append(np.asarray(p, dtype=float))
                if g is not None:
                    gates.append(np.asarray(g, dtype=float))
                kept += [r for r, _ in good]
            bar.update(len(chunk))
    return (kept, (np.concatenate(scores) if scores else np.zeros(0)),
            (np.concatenate(gates) if gates else None), failures)


def model_task(metadata: ModelMetadata) -> str:
    """The training task of a model (recorded in its recipe; older models: inferred from the classes)."""
    task = (metadata.provenance.recipe or {}).get("task")
    if task in ("binary", "ham7", "dx"):
        return task
    return "ham7" if metadata.classes == HAM7_CLASSES else "binary"


def evaluate(model: str | os.PathLike, data: Sequence[str], out: str | os.PathLike, *, split: str = "test",
             split_mode: str = "given", seed: int = 0, folds: int | None = None, fold: int = 0,
             backend: str = "onnxruntime", artifact: str | None = None, threshold: float | None = None,
             device: str = "cpu", batch_size: int = 32, n_boot: int = 2000, echo: Echo = click.echo,
             ood: str | os.PathLike | None = None) -> dict[str, Any]:
    """Score labelled images and write metrics.json, roc.png, confusion.png and scores.csv to ``out``.

    Figures per data set AND pooled (and pooled over the sets the model's threshold rests on), each with
    sensitivity per malignant diagnosis, from the one implementation in ``metrics.triage_report``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    scorer = open_model(model, backend, artifact, device)
    overridden = threshold is not None
    threshold = scorer.threshold if threshold is None else threshold
    rows = select_rows(data, split, split_mode, seed, folds, fold, model_task(scorer.metadata), echo)
    kept, p_malignant, gate, failures = score_rows(scorer, rows, batch_size)
    for failure in failures:
        echo(f"unreadable (left out): {failure}")
    y = np.array([int(r.malignant) for r in kept])
    basis = scorer.metadata.validation.threshold_basis or {}
    pooled_sets = [k for k in basis.get("sets", {}) if k != "pooled"]
    report = metrics.triage_report(y, p_malignant, [r.dataset for r in kept], [r.dx for r in kept], threshold,
                                   pooled_sets=pooled_sets, n_boot=n_boot, seed=seed)
    echo(f"model {scorer.metadata.model_id} via {scorer.describe.get('backend')} "
         f"({scorer.describe.get('artifact')}), split {split}, threshold {threshold:.6g}"
         + (" (overridden)" if overridden else ""))
    echo(metrics.format_triage(report))
    result = {"model": str(model), "model_id": scorer.metadata.model_id, "runner": scorer.describe, "split": split,
              "data": [str(d) for d in data], "unreadable": failures, "threshold_overridden": overridden,
              # the pooled figures stay at the top level (older readers), with every breakdown beside them
              **report["pooled"], "pooled": report["pooled"], "per_dataset": report["per_dataset"],
              "pooled_sets": report.get("pooled_sets"), "threshold_basis": basis,
              "development_model": scorer.metadata.development_model}
    # the clinic-like sets pooled on their own (the targets name them), besides the threshold's basis sets
    clinic = [name for name in CLINIC_SETS if name in set(r.dataset for r in kept)]
    if len(clinic) > 1 and sorted(clinic) != sorted(pooled_sets):
        extra = metrics.triage_report(y, p_malignant, [r.dataset for r in kept], [r.dx for r in kept], threshold,
                                      pooled_sets=clinic, n_boot=n_boot, seed=seed)
        result["pooled_" + "_".join(clinic)] = extra["pooled_sets"]
    gate_spec = scorer.metadata.gate
    gate_t = gate_spec.threshold if gate is not None else None
    sets_kept = [r.dataset for r in kept]
    if gate is not None:
        result["gate"] = gate_figures(y, p_malignant, gate, sets_kept, threshold, gate_t)
        echo(format_gate(result["gate"]))
    if ood is not None:
        result["ood"] = ood_figures(scorer, ood, split, p_malignant, gate, threshold, gate_t, batch_size, echo)
        echo(format_ood(result["ood"]))
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    with open(out / "scores.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "dataset", "dx", "malignant", "p_malignant", "decision", "gate_score"])
        for i, (row, p) in enumerate(zip(kept, p_malignant)):
            g = None if gate is None else float(gate[i])
            rejected = g is not None and g >= gate_t
            writer.writerow([row.path, row.dataset, row.dx, int(row.malignant), f"{p:.6f}",
                             "benign" if p < threshold and not rejected else "review",
                             "" if g is None else f"{g:.6f}"])
    sets = np.array([r.dataset for r in kept])
    curves = {f"{split} pooled": (y, p_malignant)}
    curves.update({f"{split} {name}": (y[sets == name], p_malignant[sets == name]) for name in sorted(set(sets.tolist()))})
    what = f"{scorer.describe.get('backend')}/{os.path.basename(str(scorer.describe.get('artifact')))}"
    metrics.plot_roc(str(out / "roc.png"), curves, threshold,
                     title=f"{scorer.metadata.model_id}\n{what}, {split} split")
    metrics.plot_confusion(str(out / "confusion.png"), report["pooled"],
                           title=f"{what}, {split} split, pooled" + (", threshold overridden" if overridden else ""))
    echo(f"wrote metrics.json, scores.csv, roc.png, confusion.png to {out}")
    return result


# ----------------------------------------------------------------------------- the not-dermoscopy gate

def gate_figures(y: np.ndarray, p: np.ndarray, gate: np.ndarray, sets: Sequence[str], threshold: float,
                 gate_threshold: float) -> dict[str, Any]:
    """Per data set and pooled: dermoscopy images the gate rejects (sent to review/: safe, but work), and
    the deployed decision's sensitivity, specificity and work reduction with the gate against without it."""
    sets_arr = np.asarray(sets)
    out: dict[str, Any] = {"threshold": float(gate_threshold), "per_dataset": {}}

    def one(mask: np.ndarray) -> dict[str, Any]:
        yy, pp, gg = y[mask], p[mask], gate[mask]
        rejected = gg >= gate_threshold
        benign_model = pp < threshold
        benign = benign_model & ~rejected
        n, n_mal = int(mask.sum()), int(yy.sum())
        return {"n": n, "rejected": int(rejected.sum()), "rejected_rate": float(rejected.mean()) if n else None,
                "rejected_ci": metrics.wilson_ci(int(rejected.sum()), n),
                "rejected_malignant": int((rejected & (yy == 1)).sum()),
                "sensitivity": float((~benign)[yy == 1].mean()) if n_mal else None,
                "specificity": float(benign[yy == 0].mean()) if n > n_mal else None,
                "work_reduction": float(benign.mean()) if n else None,
                "work_reduction_without_gate": float(benign_model.mean()) if n else None,
                "lost_work_reduction": float((benign_model & rejected).mean()) if n else None}

    for name in sorted(set(sets_arr.tolist())):
        out["per_dataset"][name] = one(sets_arr == name)
    out["pooled"] = one(np.ones(len(y), bool))
    return out


def ood_figures(scorer: Scorer, folder: str | os.PathLike, split: str, p_in: np.ndarray, gate_in: np.ndarray | None,
                threshold: float, gate_threshold: float | None, batch_size: int, echo: Echo) -> dict[str, Any]:
    """Non-dermoscopy images (ood.csv, the same split): per kind and per source, how many reach benign/
    (the gate lets them through and p < threshold), with a Wilson CI; with a gate, its AUROC and the
    dermoscopy share flagged at 95 % of these caught (FPR at 95 % TPR) against this evaluation's images."""
    from dermsort.runtime.ood import read_ood

    @dataclass
    class Item:
        path: str
        kind: str
        source: str

    rows = read_ood(folder, None if split == "all" else split)
    items = [Item(r["path"], r["kind"], r.get("source", "")) for r in rows]
    kept, p, gate, failures = score_rows(scorer, items, batch_size)
    for failure in failures:
        echo(f"unreadable non-dermoscopy image (left out): {failure}")
    passed = np.ones(len(kept), bool) if gate is None else gate < gate_threshold
    benign = passed & (p < threshold)
    result: dict[str, Any] = {"folder": str(folder), "split": split, "gate_threshold": gate_threshold,
                              "per_kind": {}, "per_source": {}}

    def one(mask: np.ndarray) -> dict[str, Any]:
        n = int(mask.sum())
        row: dict[str, Any] = {"n": n, "reached_benign": int(benign[mask].sum()),
                               "reached_benign_rate": float(benign[mask].mean()) if n else None,
                               "reached_benign_ci": metrics.wilson_ci(int(benign[mask].sum()), n),
                               "rejected_by_gate": int((~passed[mask]).sum())}
        if gate is not None and gate_in is not None and n:
            row["auroc"] = metrics.auc_score(np.r_[np.zeros(len(gate_in)), np.ones(n)], np.r_[gate_in, gate[mask]])
            row["fpr_at_95tpr"] = metrics.fpr_at_tpr(gate_in, gate[mask])
        return row

    kinds = np.array([i.kind for i in kept])
    sources = np.array([i.source for i in kept])
    for kind in sorted(set(kinds.tolist())):
        result["per_kind"][kind] = one(kinds == kind)
    for source in sorted(set(sources.tolist())):
        result["per_source"][source] = one(sources == source)
    return result


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def format_gate(g: dict[str, Any]) -> str:
    lines = [f"not-dermoscopy gate (score >= {g['threshold']:.4f} -> review/): dermoscopy images rejected"]
    for name, r in [("pooled", g["pooled"]), *g["per_dataset"].items()]:
        lines.append(f"  {name}: {r['rejected']}/{r['n']} ({_pct(r['rejected_rate'])}), work reduction "
                     f"{_pct(r['work_reduction'])} (without the gate {_pct(r['work_reduction_without_gate'])}), "
                     f"sensitivity {_pct(r['sensitivity'])}")
    return "\n".join(lines)


def format_ood(o: dict[str, Any]) -> str:
    lines = [f"non-dermoscopy images ({o['split']} split of {o['folder']}): reaching benign/"]
    for label, table in (("kind", o["per_kind"]), ("source", o["per_source"])):
        for name, r in table.items():
            ci = r["reached_benign_ci"]
            extra = (f", gate AUROC {r['auroc']:.3f}, FPR@95%TPR {_pct(r['fpr_at_95tpr'])}"
                     if r.get("auroc") is not None else "")
            lines.append(f"  {label} {name}: {r['reached_benign']}/{r['n']} ({_pct(r['reached_benign_rate'])}"
                         f"{f' [{100 * ci[0]:.1f}-{100 * ci[1]:.1f}]' if ci else ''}){extra}")
    return "\n".join(lines)
