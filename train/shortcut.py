"""Shortcut check: can a linear probe on the model's penultimate features tell the data sets apart
among BENIGN images? A model that knows which set an image came from can learn each set's prevalence
instead of the lesion. Lower is better; chance is 1 / number of sets.

    python -m dermsort.train.shortcut CHECKPOINT --data ../shared/data/ham10000 --data ... --out shortcut.json

The probe (multinomial logistic regression on standardised features, scikit-learn) is fitted on benign
train-split images and scored on benign test-split images (balanced accuracy), capped per set so every
set weighs the same. The images are read through the runtime's preprocessing, without test-time flips.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Sequence

import click
import numpy as np

from dermsort.runtime.preprocess import UnreadableImage, preprocess_file


def features(checkpoint: str | os.PathLike, paths: Sequence[str], batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(penultimate features of the images that decoded, mask of those that did)."""
    import torch

    from .checkpoint import read_checkpoint
    from .models import build_model, classifier_of

    ckpt = read_checkpoint(checkpoint)
    from dermsort.runtime.metadata import ModelMetadata

    spec = ModelMetadata.from_dict(ckpt["metadata"]).preprocess
    model = build_model(ckpt["architecture"], int(ckpt["num_classes"]), pretrained=False)
    model.load_state_dict(ckpt["state_dict"], strict=True)
    model.eval()
    captured: list[torch.Tensor] = []
    classifier_of(model, ckpt["architecture"]).register_forward_pre_hook(lambda _m, a: captured.append(a[0]))
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    out, ok = [], []
    with torch.no_grad():
        for start in range(0, len(paths), batch_size):
            arrays = []
            for p in paths[start:start + batch_size]:
                try:
                    arrays.append(preprocess_file(p, spec)[0])
                    ok.append(True)
                except (UnreadableImage, OSError):
                    ok.append(False)
            if arrays:
                captured.clear()
                model(torch.from_numpy(np.stack(arrays)))
                out.append(captured[0].flatten(1).numpy())
    return np.concatenate(out), np.asarray(ok, bool)


def shortcut_check(checkpoint: str | os.PathLike, data: Sequence[str], per_set_train: int = 200,
                   per_set_test: int = 120, min_per_set: int = 20, seed: int = 0) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.preprocessing import StandardScaler

    from .data import read_sources

    rows = [r for r in read_sources(data, echo=lambda *_a: None) if not r.malignant]
    rng = random.Random(seed)
    picked: dict[str, dict[str, list[Any]]] = {"train": {}, "test": {}}
    for split, cap in (("train", per_set_train), ("test", per_set_test)):
        by_set: dict[str, list[Any]] = {}
        for r in rows:
            if r.split == split:
                by_set.setdefault(r.dataset, []).append(r)
        for name, items in sorted(by_set.items()):
            rng.shuffle(items)
            picked[split][name] = items[:cap]
    sets = sorted(n for n in picked["train"] if len(picked["train"][n]) >= min_per_set
                  and len(picked["test"].get(n, [])) >= min_per_set)
    if len(sets) < 2:
        raise ValueError("the shortcut check needs >= 2 data sets with benign train and test images")
    xs, ys = {}, {}
    for split in ("train", "test"):
        items = [(r, i) for i, name in enumerate(sets) for r in picked[split][name]]
        f, ok = features(checkpoint, [r.path for r, _ in items])
        xs[split], ys[split] = f, np.array([i for (_, i), good in zip(items, ok) if good])
    scaler = StandardScaler().fit(xs["train"])
    probe = LogisticRegression(max_iter=2000, C=0.1).fit(scaler.transform(xs["train"]), ys["train"])
    pred = probe.predict(scaler.transform(xs["test"]))
    recall = {name: float((pred[ys["test"] == i] == i).mean()) for i, name in enumerate(sets)}
    return {"sets": sets, "n_train": int(len(ys["train"])), "n_test": int(len(ys["test"])),
            "balanced_accuracy": float(balanced_accuracy_score(ys["test"], pred)), "chance": 1.0 / len(sets),
            "recall_per_set": recall, "probe": "multinomial logistic regression (C=0.1) on standardised "
            "penultimate features, benign images only; fitted on train split, scored on test split",
            "checkpoint": str(checkpoint)}


def line(result: dict[str, Any]) -> str:
    per = ", ".join(f"{k} {100 * v:.0f} %" for k, v in result["recall_per_set"].items())
    return (f"shortcut check: a linear probe tells the {len(result['sets'])} data sets apart among benign test images "
            f"with balanced accuracy {100 * result['balanced_accuracy']:.1f} % (chance {100 * result['chance']:.0f} %; "
            f"recall per set: {per}; {result['n_train']} train / {result['n_test']} test images). Lower is better.")


@click.command()
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("--data", "data", multiple=True, required=True, type=click.Path(exists=True))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path))
def main(checkpoint: str, data: tuple[str, ...], out: Path) -> None:
    """Write the shortcut check of CHECKPOINT to OUT (JSON) and print its line."""
    try:
        result = shortcut_check(checkpoint, list(data))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    click.echo(line(result))


if __name__ == "__main__":  # pragma: no cover
    main()
