"""The naive pipeline that speed-ups are measured against, in the same run.

What a straightforward script does (the seed DermoSort: cv2.imread, full-resolution resize, one image
at a time): read a file, decode every pixel (no JPEG ``draft``), resize, normalise, run the model on a
batch of one, decide; no thread pool, no batching. Pixels after the resize use the runtime's own
resize/crop/normalise, so only the pipeline differs, not the model's input definition.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageOps

from dermsort.runtime.metadata import ModelMetadata, PreprocessSpec
from dermsort.runtime.preprocess import resize_and_crop, to_array


def decode_full(path: str | Path, spec: PreprocessSpec) -> np.ndarray:
    """File -> model input with a full-resolution decode (what runtime.preprocess avoids with ``draft``)."""
    with open(path, "rb") as fh:
        data = fh.read()
    img = Image.open(io.BytesIO(data))
    img.load()
    img = ImageOps.exif_transpose(img).convert("RGB")
    return to_array(resize_and_crop(img, spec), spec)


def _as_probabilities(out: np.ndarray) -> np.ndarray:
    out = np.asarray(out, dtype=np.float64)
    if out.min() >= 0.0 and np.allclose(out.sum(axis=1), 1.0, atol=1e-4):
        return out
    out = np.exp(out - out.max(axis=1, keepdims=True))
    return out / out.sum(axis=1, keepdims=True)


@dataclass
class NaiveRunner:
    """A model behind ``predict(batch) -> probabilities``, with what the report says about it."""

    label: str
    engine: str
    predict: Callable[[np.ndarray], np.ndarray]
    metadata: ModelMetadata
    threshold: float
    close: Callable[[], None] = lambda: None


def torch_runner(module: Any, metadata: ModelMetadata, threshold: float | None = None,
                 source: str = "checkpoint") -> NaiveRunner:
    """PyTorch eager FP32 (``torch.no_grad``; the seed script did not even disable autograd)."""
    import torch

    module = module.float().eval()

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return _as_probabilities(module(torch.from_numpy(batch)).numpy())

    return NaiveRunner(label=f"naive: PyTorch eager FP32 ({source}), full decode, batch 1", engine="torch-eager",
                       predict=predict, metadata=metadata,
                       threshold=float(threshold if threshold is not None else metadata.threshold))


def backend_runner(backend: Any, label: str) -> NaiveRunner:
    return NaiveRunner(label=label, engine=backend.spec.name, predict=backend.predict, metadata=backend.metadata,
                       threshold=float(backend.artifact.threshold), close=backend.close)


def load_checkpoint_module(path: str | Path) -> tuple[Any, ModelMetadata]:
    """(torch module, metadata) from a training checkpoint, through train's checkpoint contract."""
    try:
        from dermsort.train.checkpoint import load_checkpoint
    except ImportError as exc:
        raise ImportError(f"no checkpoint loader available (pip install \"dermsort[train]\"): {exc}") from None
    try:
        module, metadata, _ = load_checkpoint(path)
    except ImportError:  # dermsort.train.models cannot be imported: export's loader knows torchvision's names
        from dermsort.export.checkpoint import load_checkpoint as load_for_export

        loaded = load_for_export(path)
        module, metadata = loaded.model, loaded.metadata
    return module, metadata


def run_naive(runner: NaiveRunner, paths: list[Path]) -> tuple[float, list[dict[str, Any]]]:
    """One serial pass: (seconds, decisions) with the same decision rule as the sorter (p < threshold)."""
    spec = runner.metadata.preprocess
    malignant = runner.metadata.malignant_indices()
    decisions = []
    start = time.perf_counter()
    for path in paths:
        try:
            probs = runner.predict(decode_full(path, spec)[None])
            p = float(probs[0, malignant].sum())
            decision = "benign" if p < runner.threshold else "review"
            reason = ""
        except Exception as exc:  # a naive script would crash; we record it instead
            p, decision, reason = None, "review", f"{type(exc).__name__}: {exc}"
        decisions.append({"file": str(path), "decision": decision, "p_malignant": p, "reason": reason})
    return time.perf_counter() - start, decisions


def main(argv: list[str] | None = None) -> int:
    """Whole-process naive run (studies/wholeproc.py): the bundle's model, full decode, batch 1, serial, copy."""
    import argparse
    import shutil
    import sys

    from dermsort.runtime.backends.base import create_backend
    from dermsort.runtime.bundle import DEFAULT_BUNDLE, load_bundle

    parser = argparse.ArgumentParser(prog="python -m dermsort.bench.naive")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--model", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--artifact", default="onnx-fp32")
    parser.add_argument("--out", type=Path, default=None, help="copy images into OUT/benign, OUT/review")
    args = parser.parse_args(argv)
    bundle, _ = load_bundle(args.model)
    art = bundle.get(args.artifact)
    bundle.verify(art)
    runner = backend_runner(create_backend(args.backend, bundle, art).load(), "naive")
    paths = sorted(p for p in args.folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".tif", ".tiff"})
    seconds, decisions = run_naive(runner, paths)
    if args.out is not None:
        for d in decisions:
            folder = args.out / d["decision"]
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy2(d["file"], folder / Path(d["file"]).name)
    print(f"{len(decisions)} images in {seconds:.2f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
