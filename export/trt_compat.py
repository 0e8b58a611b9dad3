"""Will TensorRT's ONNX parser take this graph? A static check of the quantized (QDQ) ONNX, run at export.

TensorRT builds INT8 engines from the bundle's ``model.int8.onnx`` by *explicit quantization*: it
reads the Q/DQ scales instead of calibrating itself. Its parser is stricter than ONNX Runtime:

* **no INT32 DequantizeLinear** -- ONNX Runtime's default QDQ quantization also quantizes Conv/Gemm
  biases to int32 (a DequantizeLinear fed by an INT32 initializer); TensorRT's Q/DQ layers are int8
  (weights and activations) and it fuses the float bias itself. Quantize with ``QuantizeBias=False``.
* **symmetric int8** -- every QuantizeLinear/DequantizeLinear zero point must be an int8 constant 0
  (a QuantizeLinear without a zero point outputs uint8 by the ONNX spec: refused as well).
* **per-tensor activations** -- only weights (constant inputs) may carry per-channel scales.
* **opset** -- per-channel Q/DQ (the ``axis`` attribute) needs opset >= 13; the project exports at 17
  (``onnx_export.OPSET``), well inside what TensorRT 10's parser reads, and keeps the quantized
  graph there (the check fails if a quantizer ever bumps it).
* **ops** -- only the standard-domain operators of this model family (EfficientNet-Lite0 with the
  flip test-time augmentation, the test CNNs), all of which TensorRT 10 parses; a contrib-domain op
  (``com.microsoft``) or anything new fails the check so it is looked at before it reaches a device.

``trt_compatibility_problems`` needs only ``onnx`` (no TensorRT, no GPU): it runs on every export.
Passing it does not prove an engine builds -- ``dermsort export-engines`` on the device does that --
but failing it proves one will not, or not as INT8.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

#: opsets the quantized graph may declare for the default ONNX domain
MIN_OPSET = 13  # DequantizeLinear/QuantizeLinear ``axis`` (per-channel) arrived in opset 13
MAX_OPSET = 17  # what onnx_export writes; TensorRT 10.x parses it (and 8.6 already did)

#: Standard ops TensorRT's parser handles, for this model family. Derived from the graphs the
#: exporter actually writes: the FP32 reference of EfficientNet-Lite0 wrapped in FlipTTA('hflip')
#: (Conv, Clip, Add, Pad, Slice, Concat, Reshape, Transpose, Cast, ConstantOfShape, Shape, Gather,
#: Unsqueeze, Constant, GlobalAveragePool, ReduceMean, Gemm, Softmax -- its INT8 QDQ graph after
#: quant_pre_process keeps Conv, Clip, Add, Concat, Reshape, Shape, Slice, Gather, Unsqueeze,
#: GlobalAveragePool, Gemm, ReduceMean, Softmax plus Q/DQ), the test CNNs (Relu, Flatten,
#: BatchNormalization), the few shape/elementwise ops such graphs pick up across exporter versions, and
#: the gate's ReduceMax/ReduceSum/Sqrt/Max (TensorRT 10 supports each natively: IReduceLayer, IUnaryLayer,
#: IElementWiseLayer).
TRT_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear",
    "Conv", "BatchNormalization", "Relu", "Clip", "Sigmoid", "Add", "Mul", "Sub", "Div",
    "GlobalAveragePool", "AveragePool", "MaxPool", "ReduceMean", "Flatten", "Reshape", "Squeeze", "Unsqueeze",
    "Gemm", "MatMul", "Softmax", "Slice", "Concat", "Transpose", "Pad",
    "Identity", "Constant", "ConstantOfShape", "Shape", "Gather", "Cast",
    # the not-dermoscopy gate (train/gate.py): distance to the nearest class mean and the probe, in float
    "ReduceMax", "ReduceSum", "Sqrt", "Max",
})

_INT8 = 3  # onnx.TensorProto.INT8
_INT32 = 6  # onnx.TensorProto.INT32


def _load(model: Any) -> Any:
    import onnx

    if isinstance(model, (str, os.PathLike)):
        return onnx.load(os.fspath(model))
    return model


def trt_compatibility_problems(onnx_model: Any) -> list[str]:
    """Every reason TensorRT's parser would refuse this graph (or not run it as INT8); [] when none.

    ``onnx_model``: an ``onnx.ModelProto`` or a path to a .onnx file.
    """
    from onnx import numpy_helper

    model = _load(onnx_model)
    graph = model.graph
    problems: list[str] = []

    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    opset = opsets.get("ai.onnx")
    if opset is None or not MIN_OPSET <= opset <= MAX_OPSET:
        problems.append(f"opset {opset} outside {MIN_OPSET}..{MAX_OPSET} (per-channel Q/DQ needs >= {MIN_OPSET}; "
                        f"the project's TensorRT target is <= {MAX_OPSET})")

    consts: dict[str, Any] = {t.name: t for t in graph.initializer}
    for node in graph.node:  # Constant nodes feed scales/zero points in some exporters
        if node.op_type == "Constant" and node.output:
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                consts[node.output[0]] = value

    def dtype(name: str) -> int | None:
        tensor = consts.get(name)
        return None if tensor is None else tensor.data_type

    unsupported: dict[str, int] = {}
    int32_dq: list[str] = []
    for node in graph.node:
        label = node.name or f"{node.op_type}({', '.join(node.input)})"
        if node.domain not in ("", "ai.onnx"):
            unsupported[f"{node.domain}.{node.op_type}"] = unsupported.get(f"{node.domain}.{node.op_type}", 0) + 1
            continue
        if node.op_type not in TRT_OPS:
            unsupported[node.op_type] = unsupported.get(node.op_type, 0) + 1
            continue
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if node.op_type == "DequantizeLinear" and dtype(node.input[0]) == _INT32:
            int32_dq.append(label)
            continue
        zero_point = node.input[2] if len(node.input) > 2 and node.input[2] else ""
        if not zero_point:
            if node.op_type == "QuantizeLinear":
                problems.append(f"{label}: no zero point, so it outputs uint8 (TensorRT needs an int8 zero point of 0)")
            elif dtype(node.input[0]) not in (None, _INT8):
                problems.append(f"{label}: dequantizes a non-int8 tensor")
            continue
        if zero_point not in consts:
            problems.append(f"{label}: zero point {zero_point!r} is not a constant")
            continue
        if dtype(zero_point) != _INT8:
            problems.append(f"{label}: zero point is not int8 (TensorRT's Q/DQ are signed int8)")
        elif numpy_helper.to_array(consts[zero_point]).any():
            problems.append(f"{label}: zero point is not 0 (asymmetric; TensorRT needs symmetric quantization)")
        if node.op_type == "QuantizeLinear" and node.input[0] not in consts:
            scale = consts.get(node.input[1])
            if scale is not None and len(scale.dims) > 0 and int(max(scale.dims)) > 1:
                problems.append(f"{label}: per-channel scale on an activation (TensorRT: per-tensor only)")
    if int32_dq:
        problems.append(f"{len(int32_dq)} DequantizeLinear node(s) of INT32 input (quantized biases, e.g. "
                        f"{int32_dq[0]}): TensorRT's parser refuses them; quantize with QuantizeBias=False")
    for op, n in sorted(unsupported.items()):
        problems.append(f"{n} {op} node(s): not in the TensorRT allow-list for this model family")
    return problems


def check(onnx_model: Any) -> dict[str, Any]:
    """The check's result as recorded in the manifest and the export report."""
    model = _load(onnx_model)
    problems = trt_compatibility_problems(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"passed": not problems, "problems": problems, "opset": opset,
            "checked_by": "dermsort.export.trt_compat.trt_compatibility_problems",
            "rules": "no INT32 DequantizeLinear (bias), int8 zero points all 0, per-tensor activations, "
                     f"opset {MIN_OPSET}..{MAX_OPSET}, ops in the TensorRT allow-list"}


def check_file(path: str | os.PathLike) -> dict[str, Any]:
    return {"file": Path(path).name, **check(path)}
