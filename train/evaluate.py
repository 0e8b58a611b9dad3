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
    score: Callable[[np.ndarray], np.ndarray]


def checkpoint_scorer(path: Path, device: str = "cpu") -> Scorer:
    import torch

    from .trainer import load_checkpoint, resolve_device

    torch_device = resolve_device(device)
    model, metadata, _ = load_checkpoint(path, map_location=torch_device)
    model.to(torch_device)
    idx = metadata.malignant_indices()

    @torch.no_grad()
    def score(batch: np.ndarray) -> np.ndarray:
        probabilities = torch.softmax(model(torch.from_numpy(batch).to(torch_device)), dim=1).cpu().numpy()
        return probabilities[:, idx].sum(axis=1)

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

    def score(batch: np.ndarray) -> np.ndarray:
        return runner.p_malignant(runner.predict(batch))

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


def score_rows(scorer: Scorer, rows: Sequence[Row], batch_size: int = 32, threads: int | None = None
               ) -> tuple[list[Row], np.ndarray, list[str]]:
    """Preprocess (runtime path) and score; returns the rows that decoded, their p_malignant, and failures."""
    spec = scorer.metadata.preprocess
    kept: list[Row] = []
    scores: list[np.ndarray] = []
    failures: list[str] = []

    def load(row: Row):
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
                scores.append(np.asarray(scorer.score(np.stack([a for _, a in good])), dtype=float))
                kept += [r for r, _ in good]
            bar.update(len(chunk))
    return kept, (np.concatenate(scores) if scores else np.zeros(0)), failures


def model_task(metadata: ModelMetadata) -> str:
    """The training task of a model (recorded in its recipe; older models: inferred from the classes)."""
    task = (metadata.provenance.recipe or {}).get("task")
    if task in ("binary", "ham7", "dx"):
        return task
    return "ham7" if metadata.classes == HAM7_CLASSES else "binary"


def evaluate(model: str | os.PathLike, data: Sequence[str], out: str | os.PathLike, *, split: str = "test",
             split_mode: str = "given", seed: int = 0, folds: int | None = None, fold: int = 0,
             backend: str = "onnxruntime", artifact: str | None = None, threshold: float | None = None,
             device: str = "cpu", batch_size: int = 32, n_boot: int = 2000, echo: Echo = click.echo) -> dict[str, Any]:
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
    kept, p_malignant, failures = score_rows(scorer, rows, batch_size)
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
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    with open(out / "scores.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "dataset", "dx", "malignant", "p_malignant", "decision"])
        for row, p in zip(kept, p_malignant):
            writer.writerow([row.path, row.dataset, row.dx, int(row.malignant), f"{p:.6f}",
                             "benign" if p < threshold else "review"])
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
