"""Which INT8 recipe keeps a model's decisions: every method through the same parity gate, one table.

    python -m studies.quant_study BUNDLE --calib ../shared/data/*/labels.csv --out REPORT_DIR

For each method the FP32 reference ONNX of BUNDLE is quantised with the same real calibration images
(train splits, mixed over data sets), scored on the gate set (val splits of every labels.csv) by the
runtime's own kind of session, and judged by ``parity.compare`` (the export gate): flips in each
direction, sensitivity and specificity after per-artifact threshold recalibration, verdict; plus
latency at batch 1 and file size. Writes quant_study.md / .json to REPORT_DIR.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import click
import numpy as np

from dermsort.runtime.bundle import load_bundle

from dermsort.export import calibration
from dermsort.export.parity import Tolerances, compare


def _ort_scores(path: Path, tensors: np.ndarray, mal_idx: list[int]) -> tuple[np.ndarray, float]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out = np.concatenate([session.run(None, {name: tensors[i:i + 32]})[0] for i in range(0, len(tensors), 32)])
    return out[:, mal_idx].sum(axis=1), _latency(lambda x: session.run(None, {name: x}), tensors[:1])


def _ov_scores(model: Any, tensors: np.ndarray, mal_idx: list[int]) -> tuple[np.ndarray, float]:
    import openvino as ov

    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 2})
    out = np.concatenate([compiled(tensors[i:i + 32])[0] for i in range(0, len(tensors), 32)])
    return out[:, mal_idx].sum(axis=1), _latency(lambda x: compiled(x), tensors[:1])


def _latency(run: Callable[[np.ndarray], Any], one: np.ndarray, repeats: int = 60) -> float:
    for _ in range(5):
        run(one)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run(one)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def _ort_int8(src: Path, dst: Path, calib: np.ndarray, method: str, exclude: str = "") -> None:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from dermsort.export.onnx_export import QUANT_EXTRA_OPTIONS

    with tempfile.TemporaryDirectory() as work:
        prepped = Path(work) / "prepped.onnx"
        quant_pre_process(os.fspath(src), os.fspath(prepped), skip_symbolic_shape=False)
        nodes = onnx.load(os.fspath(prepped)).graph.node
        skip = [n.name for n in nodes if n.op_type == "Softmax"]
        convs = [n.name for n in nodes if n.op_type == "Conv"]
        if "stem" in exclude and convs:
            skip.append(convs[0])
        if "head" in exclude and convs:
            skip.append(convs[-1])
        if "fc" in exclude:
            skip += [n.name for n in nodes if n.op_type in ("Gemm", "MatMul")]
        extra = dict(QUANT_EXTRA_OPTIONS)
        if method == "percentile":
            extra["CalibPercentile"] = 99.99
        quantize_static(os.fspath(prepped), os.fspath(dst), calibration.ort_reader(calib, "input"),
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, nodes_to_exclude=skip, extra_options=extra,
                        calibrate_method={"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                                          "entropy": CalibrationMethod.Entropy}[method])


def _nncf_int8(src: Path, calib: np.ndarray, fast_bias: bool, ignore_ends: bool) -> Any:
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    model = ov.convert_model(os.fspath(src))
    ignored = None
    if ignore_ends:
        convs = [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"]
        mats = [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "MatMul"]
        ignored = nncf.IgnoredScope(names=[convs[0], convs[-1]] + mats, validate=False)
    kwargs = {"ignored_scope": ignored} if ignored else {}
    return nncf.quantize(model, calibration.nncf_dataset(calib), subset_size=len(calib),
                         preset=nncf.QuantizationPreset.PERFORMANCE, fast_bias_correction=fast_bias,
                         advanced_parameters=AdvancedQuantizationParameters(), **kwargs)


def _nncf_onnx_int8(src: Path, dst: Path, calib: np.ndarray, fast_bias: bool) -> None:
    """NNCF's ONNX backend: QDQ ONNX (symmetric, per-channel weights, float bias) for ONNX Runtime / TensorRT."""
    import nncf
    import onnx

    model = onnx.load(os.fspath(src))
    softmax = [n.name for n in model.graph.node if n.op_type == "Softmax"]
    quantized = nncf.quantize(model, nncf.Dataset([{"input": calib[i:i + 1]} for i in range(len(calib))]),
                              subset_size=len(calib), preset=nncf.QuantizationPreset.PERFORMANCE,
                              fast_bias_correction=fast_bias, ignored_scope=nncf.IgnoredScope(names=softmax, validate=False))
    onnx.save(quantized, os.fspath(dst))


METHODS = {
    "ort-minmax": ("onnxruntime QDQ, MinMax, per-channel, symmetric, no bias quantization (the export default)",
                   lambda s, d, c: _ort_int8(s, d, c, "minmax")),
    "ort-percentile": ("onnxruntime QDQ, percentile 99.99 calibration", lambda s, d, c: _ort_int8(s, d, c, "percentile")),
    "ort-entropy": ("onnxruntime QDQ, entropy (KL) calibration", lambda s, d, c: _ort_int8(s, d, c, "entropy")),
    "ort-minmax-fp-ends": ("onnxruntime QDQ, MinMax; stem conv, last conv and classifier kept FP32",
                           lambda s, d, c: _ort_int8(s, d, c, "minmax", "stem,head,fc")),
    "nncf-onnx-full-bias": ("NNCF PTQ on the ONNX graph (QDQ ONNX for ONNX Runtime), full bias correction",
                            lambda s, d, c: _nncf_onnx_int8(s, d, c, False)),
    "nncf-fast-bias": ("NNCF PTQ, performance preset, fast bias correction (the export default)",
                       lambda s, d, c: _nncf_int8(s, c, True, False)),
    "nncf-full-bias": ("NNCF PTQ, full bias correction", lambda s, d, c: _nncf_int8(s, c, False, False)),
    "nncf-fp-ends": ("NNCF PTQ, fast bias correction; stem conv, last conv and classifier kept FP32",
                     lambda s, d, c: _nncf_int8(s, c, True, True)),
}


@click.command()
@click.argument("bundle_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--calib", "calib", multiple=True, required=True, help="labels.csv files (train split calibrates, val gates).")
@click.option("--calib-count", default=512, show_default=True, type=int)
@click.option("--hist-calib-count", default=64, show_default=True, type=int,
              help="Calibration images for ONNX Runtime's percentile/entropy calibrators (they keep every activation "
                   "in memory: 256 images of Lite0 exhausted 24 GB here).")
@click.option("--methods", default=",".join(METHODS), show_default=True)
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path))
def main(bundle_dir: Path, calib: tuple[str, ...], calib_count: int, hist_calib_count: int, methods: str,
         out: Path) -> None:
    """Quantise BUNDLE's FP32 ONNX by every method and judge each with the export's parity gate."""
    import openvino as ov

    bundle, _ = load_bundle(bundle_dir)
    meta = bundle.metadata
    mal_idx = meta.malignant_indices()
    src = bundle.root / bundle.reference
    gate_rows, _ = calibration.gate_set(list(calib), list(calib), calibration.GATE_SPLIT)
    gate, kept = calibration.load_tensors([r.path for r in gate_rows], meta.preprocess, skip_concerns=False)
    labels = np.array([gate_rows[i].malignant for i in kept], dtype=int)
    files = calibration.calibration_files(list(calib), calib_count, exclude=[r.path for r in gate_rows])
    calib_tensors, _ = calibration.load_tensors(files, meta.preprocess, skip_concerns=True)
    click.echo(f"gate set {len(labels)} images ({labels.sum()} malignant); {len(calib_tensors)} calibration images",
               err=True)
    p_ref, lat_ref = _ort_scores(src, gate, mal_idx)
    target = meta.validation.target_sensitivity or 0.95
    rows: list[dict[str, Any]] = [{"method": "fp32 (reference)", "description": "ONNX FP32", "latency_ms": lat_ref,
                                   "size_mb": src.stat().st_size / 1e6}]
    out.mkdir(parents=True, exist_ok=True)
    for name in [m for m in methods.split(",") if m]:
        description, make = METHODS[name]
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as work:
            dst = Path(work) / "int8.onnx"
            try:
                uses = calib_tensors[:hist_calib_count] if name in ("ort-percentile", "ort-entropy") else calib_tensors
                made = make(src, dst, uses)
                if name.startswith("ort") or name.startswith("nncf-onnx"):
                    p, lat = _ort_scores(dst, gate, mal_idx)
                    size = dst.stat().st_size / 1e6
                else:
                    xml = Path(work) / "int8.xml"
                    ov.save_model(made, os.fspath(xml))
                    p, lat = _ov_scores(ov.Core().read_model(os.fspath(xml)), gate, mal_idx)
                    del made
                    size = (xml.stat().st_size + xml.with_suffix(".bin").stat().st_size) / 1e6
            except Exception as exc:  # one method failing must not lose the others' rows
                rows.append({"method": name, "description": description, "error": f"{type(exc).__name__}: {exc}"})
                click.echo(f"{name}: failed: {exc}", err=True)
                continue
        result = compare(name, p, p_ref, labels, meta.threshold, tolerances=Tolerances(), target_sensitivity=target)
        r = result.to_dict()
        rows.append({"method": name, "description": description, "status": result.status, "latency_ms": lat,
                     "size_mb": size, "seconds": round(time.perf_counter() - started, 1), **{k: r.get(k) for k in (
                         "flips", "flips_to_benign", "flips_to_review", "malignant_to_benign", "benign_to_review",
                         "sensitivity", "sensitivity_reference", "specificity", "specificity_reference",
                         "specificity_drop", "threshold", "max_abs_diff", "auc", "auc_reference")}})
        click.echo(f"{name}: {result.message}", err=True)
        _write(out, meta, bundle_dir, labels, calib_tensors, hist_calib_count, rows)


def _write(out: Path, meta: Any, bundle_dir: Path, labels: np.ndarray, calib_tensors: np.ndarray, hist_calib_count: int,
           rows: list[dict[str, Any]]) -> None:
    """The table so far (rewritten after every method, so a crash keeps what was measured)."""
    (out / "quant_study.json").write_text(json.dumps({"bundle": meta.model_id, "gate_images": int(len(labels)),
                                                      "gate_malignant": int(labels.sum()), "rows": rows}, indent=2))
    lines = [f"# INT8 methods on {meta.model_id}", "",
             f"Gate set: val splits of every labels.csv, {len(labels)} images ({int(labels.sum())} malignant); "
             f"{len(calib_tensors)} calibration images (train splits, mixed over data sets; the first "
             f"{hist_calib_count} of them for ONNX Runtime's percentile/entropy calibrators). Verdicts by the export's "
             "parity gate (`dermsort.export.parity.compare`, default tolerances). Latency: median batch-1 ms, 2 threads, "
             "this CPU. Command: `python -m studies.quant_study " + f"{bundle_dir} --calib ... --out {out}`", "",
             "| method | verdict | flips (to benign / to review) | malignant -> benign | sensitivity (FP32) | "
             "specificity (FP32) | AUC | latency ms | MB |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | failed: {r['error'][:80]} | | | | | | | |")
        elif "status" not in r:
            lines.append(f"| {r['method']} | reference | | | | | | {r['latency_ms']:.2f} | {r['size_mb']:.1f} |")
        else:
            lines.append(f"| {r['method']} | {r['status']} | {r['flips']} ({r['flips_to_benign']} / {r['flips_to_review']}) | "
                         f"{r['malignant_to_benign']} | {100 * r['sensitivity']:.1f} % ({100 * r['sensitivity_reference']:.1f} %) | "
                         f"{100 * r['specificity']:.1f} % ({100 * r['specificity_reference']:.1f} %) | {r['auc']:.4f} | "
                         f"{r['latency_ms']:.2f} | {r['size_mb']:.1f} |")
    lines += ["", "Descriptions:", ""] + [f"- `{r['method']}`: {r['description']}" for r in rows]
    (out / "quant_study.md").write_text("\n".join(lines) + "\n")
    click.echo(f"wrote {out / 'quant_study.md'}")


if __name__ == "__main__":  # pragma: no cover
    main()
