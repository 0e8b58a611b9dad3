"""ONNX artifacts: the FP32 reference (softmax appended, metadata inside), FP16 and INT8 (QDQ) derivatives."""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from dermsort.runtime.errors import DermsortError
from dermsort.runtime.metadata import ONNX_METADATA_KEY, ModelMetadata

from . import formats

log = logging.getLogger(__name__)

OPSET = 17
#: ORT vs torch on the FP32 reference: max |probability diff| allowed (Optimum-style ATOL)
TORCH_ATOL = 1e-4


class ExportError(DermsortError):
    """An export step failed in a way the user must look at (broken graph, parity with torch lost)."""


def with_softmax(model: Any) -> Any:
    """The trained module (logits out) with softmax appended, so the graph outputs probabilities.

    A module that already outputs probabilities (``outputs_probabilities``: the classifier with its
    not-dermoscopy gate, whose extra last column is the gate's score) is returned as it is.
    """
    import torch
    from torch import nn

    if getattr(model, "outputs_probabilities", False):
        return model.eval()

    class Probabilities(nn.Module):
        def __init__(self, logits_model: nn.Module) -> None:
            super().__init__()
            self.model = logits_model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.model(x), dim=1)

    return Probabilities(model).eval()


def set_metadata(proto: Any, metadata: ModelMetadata, **extra: str) -> None:
    """Store the full metadata JSON under ONNX_METADATA_KEY (replacing an older copy)."""
    values = {ONNX_METADATA_KEY: metadata.to_json(), **extra}
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key not in values]
    del proto.metadata_props[:]
    for key, value in [*keep, *values.items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def _save_checked(proto: Any, path: Path) -> None:
    import onnx

    onnx.save(proto, os.fspath(path))
    try:
        onnx.checker.check_model(os.fspath(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path.name} fails onnx.checker: {str(exc).splitlines()[0]}") from None


def export_reference(model: Any, metadata: ModelMetadata, path: Path, calib_batch: np.ndarray) -> dict[str, Any]:
    """Write the FP32 reference ONNX and prove it matches torch on real images (batch 1 and N).

    Returns the check's numbers: opset, max |p diff| vs torch, tolerance, images used.
    """
    import onnx
    import onnxruntime as ort
    import torch

    size = metadata.preprocess.input_size
    wrapped = with_softmax(model)
    dummy = torch.from_numpy(np.ascontiguousarray(calib_batch[:1]))
    # The TorchScript-based exporter (dynamo=False) is the one proven on these CNNs; dynamic batch axis
    # so one file serves batch 1 (watch mode) and batched sorting alike.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter is chosen deliberately
        torch.onnx.export(wrapped, (dummy,), os.fspath(path), input_names=[metadata.input_name],
                          output_names=[metadata.output_name], opset_version=OPSET, do_constant_folding=True,
                          dynamic_axes={metadata.input_name: {0: "batch"}, metadata.output_name: {0: "batch"}},
                          dynamo=False)
    proto = onnx.load(os.fspath(path))
    set_metadata(proto, metadata)
    _save_checked(proto, path)
    inputs = proto.graph.input
    dims = [d.dim_param or d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
    if dims[1:] != [3, size, size] or not isinstance(dims[0], str):
        raise ExportError(f"reference ONNX input has shape {dims}, expected [batch, 3, {size}, {size}]")

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"])
    batch = np.ascontiguousarray(calib_batch[:16], dtype=np.float32)
    with torch.no_grad():
        expected = wrapped(torch.from_numpy(batch)).numpy()
    got_batched = session.run(None, {metadata.input_name: batch})[0]
    got_single = session.run(None, {metadata.input_name: batch[:1]})[0]
    diff = float(max(np.abs(got_batched - expected).max(), np.abs(got_single - expected[:1]).max()))
    check = {"opset": OPSET, "torch_max_abs_diff": diff, "torch_atol": TORCH_ATOL, "images": int(len(batch)),
             "batch_sizes": [1, int(len(batch))], "onnx_checker": "passed"}
    if not diff <= TORCH_ATOL:
        raise ExportError(f"ONNX Runtime and torch disagree on the FP32 reference: max |p diff| {diff:.2e} > "
                          f"{TORCH_ATOL:.0e} on {len(batch)} real images (unsupported op or exporter bug)")
    log.info("reference ONNX matches torch: max |p diff| %.2e on %d images", diff, len(batch))
    return check


def convert_fp16(src: Path, dst: Path, metadata: ModelMetadata) -> None:
    """FP16 weights and compute, float32 input/output (keep_io_types) so callers never change."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    proto = onnx.load(os.fspath(src))
    # Softmax stays FP32: probabilities near 0/1 are where the threshold lives for skewed classes.
    half = convert_float_to_float16(proto, keep_io_types=True, op_block_list=[*DEFAULT_OP_BLOCK_LIST, "Softmax"])
    # the converter appends its boundary Casts at the end of the node list; ONNX requires topological order
    from onnxruntime.transformers.onnx_model import OnnxModel

    sorted_model = OnnxModel(half)
    sorted_model.topological_sort()
    half = sorted_model.model
    set_metadata(half, metadata, dermsort_precision="fp16")
    _save_checked(half, dst)


#: ONNX Runtime static quantization settings of the INT8 QDQ artifact; every one is what TensorRT's explicit
#: quantization needs, so the same file feeds ONNX Runtime here and ``export-engines`` on the device
#: (checked after writing by ``trt_compat.trt_compatibility_problems``). ONNX Runtime's CPU provider fuses
#: the float bias into QLinearConv itself, so not quantizing biases costs it nothing.
QUANT_EXTRA_OPTIONS = {
    "ActivationSymmetric": True,  # zero point 0 on activations (TensorRT: symmetric only)
    "WeightSymmetric": True,      # zero point 0 on weights
    "QuantizeBias": False,        # no INT32 bias DequantizeLinear (TensorRT's parser refuses it)
}


#: the U8S8 form: uint8 activations with a zero point (asymmetric), int8 symmetric weights. ONNX Runtime's
#: CPU int8 kernels (MLAS, VNNI) are built for it: S8S8 runs no faster than FP32 there, U8S8 ~2x faster.
#: TensorRT refuses non-zero zero points, so this form is for ONNX Runtime only (onnx-int8 stays S8S8).
QUANT_U8S8_EXTRA_OPTIONS = {"ActivationSymmetric": False, "WeightSymmetric": True, "QuantizeBias": False}


#: ONNX node names of the wrapped classifier (train/gate.py ``GatedClassifier.model``); the rest is the gate
CLASSIFIER_SCOPE = "/model/"


def gate_nodes(graph: Any, metadata: ModelMetadata) -> list[str]:
    """Names of the nodes outside the classifier of a gated model (none for a model without a gate)."""
    if not metadata.gate.enabled:
        return []
    return [n.name for n in graph.node if n.name and not n.name.startswith(CLASSIFIER_SCOPE)]


def quantize_int8(src: Path, dst: Path, metadata: ModelMetadata, calib_tensors: np.ndarray,
                  form: str = "s8s8") -> dict[str, Any]:
    """Static INT8, QDQ format, per-channel weights, calibrated on real preprocessed images.

    ``form="s8s8"``: activations and weights are signed and symmetric (zero point 0), biases stay float,
    the opset stays the reference's (17): what TensorRT's explicit quantization accepts, so the same file
    feeds ONNX Runtime here and ``export-engines`` on the device. ``form="u8s8"``: uint8 asymmetric
    activations, int8 symmetric weights (``QUANT_U8S8_EXTRA_OPTIONS``), the fast form for ONNX Runtime's
    CPU kernels. The result of the TensorRT graph check is returned under ``tensorrt_compatibility``.
    """
    if form not in ("s8s8", "u8s8"):
        raise ValueError(f"unknown int8 form {form!r}")
    options = QUANT_EXTRA_OPTIONS if form == "s8s8" else QUANT_U8S8_EXTRA_OPTIONS
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .calibration import ort_reader
    from .trt_compat import check

    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".quant-") as work:
        prepped = Path(work) / "prepped.onnx"
        # shape inference + basic (standard-op) graph optimisation: better calibration, still plain ONNX
        quant_pre_process(os.fspath(src), os.fspath(prepped), skip_symbolic_shape=False)
        graph = onnx.load(os.fspath(prepped)).graph
        # the softmax output is the probability itself: quantising it would coarsen p near the threshold
        softmax = [n.name for n in graph.node if n.op_type == "Softmax"]
        # the not-dermoscopy gate's few ops on the penultimate features stay float: calibration sees only
        # dermoscopy images, so INT8 ranges would clip exactly the images the gate exists for
        softmax += gate_nodes(graph, metadata)
        quantize_static(os.fspath(prepped), os.fspath(Path(work) / "int8.onnx"),
                        ort_reader(calib_tensors, metadata.input_name), quant_format=QuantFormat.QDQ,
                        per_channel=True,
                        activation_type=QuantType.QInt8 if form == "s8s8" else QuantType.QUInt8,
                        weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=softmax,
                        extra_options=dict(options))
        proto = onnx.load(os.fspath(Path(work) / "int8.onnx"))
    # quant_pre_process declares every domain ONNX Runtime knows (com.microsoft, ...) though no node uses
    # them; drop the unused imports so the file says what it needs
    used = {n.domain for n in proto.graph.node} | {"", "ai.onnx"}
    keep = [o for o in proto.opset_import if o.domain in used]
    del proto.opset_import[:]
    proto.opset_import.extend(keep)
    set_metadata(proto, metadata, dermsort_precision="int8")
    _save_checked(proto, dst)
    n_q = sum(1 for n in proto.graph.node if n.op_type == "QuantizeLinear")
    return {"method": "onnxruntime.quantization.quantize_static", "format": "QDQ", "per_channel": True, "form": form,
            "activations": "int8 symmetric" if form == "s8s8" else "uint8 asymmetric (zero point per tensor)",
            "weights": "int8 symmetric per-channel", "bias": "float (not quantized)",
            "extra_options": dict(options), "calibrate_method": "MinMax",
            "calibration_images": int(len(calib_tensors)), "quantize_nodes": n_q, "excluded": softmax,
            "tensorrt_compatibility": check(proto)}


# ----------------------------------------------------------------------------- builders (formats.TARGETS rows)

@formats.builds("onnx-fp16")
def _build_fp16(job: formats.BuildJob, row: formats.Target) -> None:
    convert_fp16(job.reference, job.work / row.path, job.metadata)


@formats.builds("onnx-int8")
def _build_int8(job: formats.BuildJob, row: formats.Target) -> formats.Built:
    return formats.Built(quantization=quantize_int8(job.reference, job.work / row.path, job.metadata,
                                                    job.calib_tensors))


@formats.builds("onnx-int8-u8s8")
def _build_int8_u8s8(job: formats.BuildJob, row: formats.Target) -> formats.Built:
    return formats.Built(quantization=quantize_int8(job.reference, job.work / row.path, job.metadata,
                                                    job.calib_tensors, form="u8s8"))
