"""The default model family through the project's own ONNX path: EfficientNet-Lite0 wrapped in FlipTTA('hflip'),
exported as the FP32 reference, quantized to INT8 QDQ -- and both graphs pass the TensorRT graph check (no
TensorRT needed: the check is static). Random weights: the graph's structure, not its accuracy, is under test."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason='needs torch: pip install "dermsort[export]"')
onnx = pytest.importorskip("onnx", reason='needs onnx: pip install "dermsort[export]"')

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.mark.slow
def test_lite0_with_flip_tta_int8_qdq_graph_is_tensorrt_ready(tmp_path):
    try:
        from dermsort.train.models import FlipTTA, build_model
    except ImportError as exc:  # train/ is optional for export-only installs
        pytest.skip(reason=f"dermsort.train.models is not importable here: {exc}")
    from dermsort.export import calibration, onnx_export
    from dermsort.export.trt_compat import MAX_OPSET, TRT_OPS, trt_compatibility_problems
    from dermsort.runtime.metadata import ModelMetadata, PreprocessSpec

    torch.manual_seed(0)
    try:
        model = FlipTTA(build_model("efficientnet_lite0", 2, False), "hflip").eval()
    except Exception as exc:  # noqa: BLE001 - the builder's optional weights/packages
        pytest.skip(reason=f"cannot build efficientnet_lite0 here: {exc}")
    spec = PreprocessSpec(input_size=224, resize_shorter=224)
    meta = ModelMetadata(model_id="lite0-graph", architecture="efficientnet_lite0", classes=["benign", "malignant"],
                         malignant_classes=["malignant"], threshold=0.5, preprocess=spec)
    files = calibration.calibration_files([DATA / "ham10000-sample" / "labels.csv", DATA / "ph2" / "labels.csv"], 8)
    tensors, _ = calibration.load_tensors(files, spec, skip_concerns=False)
    onnx_export.export_reference(model, meta, tmp_path / "model.onnx", tensors)
    info = onnx_export.quantize_int8(tmp_path / "model.onnx", tmp_path / "model.int8.onnx", meta, tensors)

    fp32 = onnx.load(str(tmp_path / "model.onnx"))
    int8 = onnx.load(str(tmp_path / "model.int8.onnx"))
    # the allow-list was derived from these graphs: every op they contain is in it
    assert {n.op_type for n in fp32.graph.node} <= TRT_OPS
    assert trt_compatibility_problems(fp32) == []
    ops = Counter(n.op_type for n in int8.graph.node)
    assert ops["QuantizeLinear"] > 40 and ops["Conv"] == 49  # the whole backbone is quantized
    assert trt_compatibility_problems(int8) == [], info["tensorrt_compatibility"]
    assert info["tensorrt_compatibility"]["passed"] is True
    assert [o.version for o in int8.opset_import if o.domain in ("", "ai.onnx")] == [MAX_OPSET]
    assert {o.domain for o in int8.opset_import} <= {"", "ai.onnx"}  # no unused contrib-domain imports
    # per-channel weights: one scale per output channel on every conv weight
    inits = {t.name: t for t in int8.graph.initializer}
    weight_dq = [n for n in int8.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                 and len(inits[n.input[0]].dims) == 4]
    assert len(weight_dq) == 49
    assert all(inits[n.input[1]].dims[0] == inits[n.input[0]].dims[0] for n in weight_dq)
    # and ONNX Runtime still runs it, close to FP32
    import onnxruntime as ort

    run = {name: ort.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"]).run(
        None, {"input": tensors[:4]})[0] for name in ("model.onnx", "model.int8.onnx")}
    assert np.allclose(run["model.int8.onnx"].sum(axis=1), 1, atol=1e-3)
    assert np.abs(run["model.int8.onnx"] - run["model.onnx"]).max() < 0.5
