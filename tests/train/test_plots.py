"""Plots a reader can trust on their own: ROC/confusion titles name the artifact and split, the
malignant-sent-to-benign cell is highlighted, and the bench plot says which artifacts passed the gate."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import DATA

pytest.importorskip("matplotlib", reason='plots need matplotlib: pip install "dermsort[train]"')

from dermsort.train import metrics  # noqa: E402


def _red_pixels(path) -> np.ndarray:
    px = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return (px[..., 0] > 180) & (px[..., 1] < 60) & (px[..., 2] < 60)


def test_confusion_highlights_malignant_sent_to_benign(tmp_path):
    report = {"confusion": {"tn": 50, "fp": 30, "fn": 3, "tp": 17}, "threshold": 0.059}
    path = tmp_path / "confusion.png"
    metrics.plot_confusion(str(path), report, title="openvino/openvino-int8, test split, pooled")
    img = Image.open(path)
    assert img.text["Title"].startswith("openvino/openvino-int8, test split")
    red = _red_pixels(path)
    h, w = red.shape
    ys, xs = np.nonzero(red)
    assert red.sum(axis=0).max() > h / 5  # a red frame (its vertical sides), not only red text
    # the frame is on the lower-left cell (truth malignant, decision benign/)
    assert np.median(ys) > h / 2 and np.median(xs) < w / 2


def test_evaluate_plots_name_the_artifact_and_split(tiny_bundle, tmp_path):
    from dermsort.train.evaluate import evaluate

    out = tmp_path / "eval"
    evaluate(tiny_bundle, [str(DATA / "ph2" / "labels.csv")], out, split="test", backend="onnxruntime",
             artifact="onnx-fp32", n_boot=50, echo=lambda *_: None)
    for name in ("roc.png", "confusion.png"):
        title = Image.open(out / name).text["Title"]
        assert "onnxruntime/model.onnx" in title or "onnxruntime/onnx-fp32" in title, title
        assert "test split" in title, title
    assert json.loads((out / "metrics.json").read_text())["split"] == "test"


def test_bench_plot_says_which_artifacts_passed(tmp_path):
    from dermsort.bench.report import plot

    def row(artifact, passed, reference=False):
        return {"kind": "artifact", "backend": "openvino", "artifact": artifact, "passed": passed,
                "reference": reference, "sensitivity": 0.93, "sensitivity_ci95": [0.88, 0.96],
                "latency_p50_ms": 3.0, "e2e_images_per_s": 100.0}

    report = {"rows": [row("onnx-fp32", True, True), row("openvino-int8", True), row("onnx-int8", False)],
              "bundle": {"model_id": "m"}, "machine": {"cpu": "cpu", "logical_cores": 2},
              "data": {"n_images": 400, "n_malignant": 102}}
    labels = plot(report, tmp_path / "bench.png")
    assert labels == ["openvino / onnx-fp32 (reference): passed the gate", "openvino / openvino-int8: passed the gate",
                      "openvino / onnx-int8: NOT passed (hollow)"]
    assert (tmp_path / "bench.png").stat().st_size > 10_000
