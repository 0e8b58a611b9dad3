"""A DermoSort-style pipeline: the reference point of issue 15's "20x" target.

What the seed DermoSort script does, faithfully in cost: ``cv2.imread`` (full decode of every pixel),
resize to 256x256, normalise, EfficientNet-B4 (torchvision) in PyTorch eager FP32, one image at a
time, autograd left on (no ``torch.no_grad``), softmax, then the file is copied into benign/ or
review/. Weights are random (``weights=None``: no download, no hub): the decisions mean nothing, the
cost is the same. When OpenCV is not installed the decode is Pillow's full decode (no ``draft``),
which is about as fast as ``cv2.imread`` for JPEG (both use libjpeg(-turbo)).

In-process: :func:`dermosort_runner` is a :class:`~dermsort.bench.naive.NaiveRunner`-like callable.
Whole process: ``python -m dermsort.bench.dermosort FOLDER --out OUT`` (what studies/wholeproc.py times).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

SIZE = 256
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


def decoder_name() -> str:
    try:
        import cv2  # noqa: F401
    except ImportError:
        return "Pillow full decode (OpenCV not installed)"
    return "cv2.imread"


def load_image(path: str | os.PathLike) -> np.ndarray:
    """File -> (1, 3, 256, 256) float32, decoding every pixel as ``cv2.imread`` does."""
    try:
        import cv2
    except ImportError:
        cv2 = None
    if cv2 is not None:
        bgr = cv2.imread(os.fspath(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"cannot read {path}")
        rgb = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
    else:
        from PIL import Image

        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR))
    x = (rgb.astype(np.float32) / 255.0 - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def build_model(num_classes: int = 2) -> Any:
    """torchvision EfficientNet-B4, random weights, eval mode, FP32."""
    import torch
    from torchvision.models import efficientnet_b4

    torch.manual_seed(0)
    return efficientnet_b4(weights=None, num_classes=num_classes).float().eval()


def dermosort_predict(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    """batch -> softmax probabilities, with autograd on as in the seed script (no ``torch.no_grad``)."""
    import torch

    def predict(batch: np.ndarray) -> np.ndarray:
        out = torch.softmax(model(torch.from_numpy(batch)), dim=1)
        return out.detach().numpy().astype(np.float64)

    return predict


def run(paths: list[Path], predict: Callable[[np.ndarray], np.ndarray], out: Path | None = None,
        threshold: float = 0.5) -> tuple[float, list[dict[str, Any]]]:
    """One serial pass over ``paths``: (seconds, decisions); copies each file when ``out`` is given."""
    decisions = []
    start = time.perf_counter()
    for path in paths:
        try:
            p = float(predict(load_image(path))[0, 1])
            decision = "benign" if p < threshold else "review"
        except Exception as exc:  # the seed script would crash; we record it
            p, decision = None, f"review ({type(exc).__name__})"
        if out is not None:
            folder = out / ("benign" if decision == "benign" else "review")
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, folder / path.name)
        decisions.append({"file": str(path), "decision": decision, "p_malignant": p})
    return time.perf_counter() - start, decisions


def dermosort_runner(metadata: Any, threshold: float = 0.5) -> Any:
    """The DermoSort-style model as a NaiveRunner (in-process rows of studies/pipeline.py and `dermsort bench`).

    ``run_naive`` decodes with the bundle's own preprocessing; :func:`run_in_process` is the faithful pass.
    """
    from .naive import NaiveRunner

    return NaiveRunner(label=f"DermoSort-style: EfficientNet-B4 @ {SIZE} px, PyTorch eager FP32, no no_grad, "
                             f"{decoder_name()}, batch 1 (random weights)",
                       engine="torch-eager", predict=dermosort_predict(build_model()), metadata=metadata,
                       threshold=threshold)


def run_in_process(paths: list[Path], reps: int, model: Any = None) -> list[float]:
    """Timed DermoSort-style passes in this process (one untimed warm-up image first)."""
    predict = dermosort_predict(model if model is not None else build_model())
    run(paths[:1], predict)
    return [run(paths, predict)[0] for _ in range(max(1, reps))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dermsort.bench.dermosort", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="copy images into OUT/benign, OUT/review")
    args = parser.parse_args(argv)
    paths = sorted(p for p in args.folder.iterdir() if p.suffix.lower() in SUFFIXES)
    seconds, decisions = run(paths, dermosort_predict(build_model()), args.out)
    print(f"{len(decisions)} images in {seconds:.2f} s ({decoder_name()})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
