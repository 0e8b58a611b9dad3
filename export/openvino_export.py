"""OpenVINO IR artifacts: FP32, FP16 (compressed weights) and INT8 (NNCF post-training quantization)."""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dermsort.runtime.metadata import ONNX_METADATA_KEY, ModelMetadata

from . import formats
from .onnx_export import CLASSIFIER_SCOPE

log = logging.getLogger(__name__)

ACCURACY_CONTROL = ("auto", "on", "off")


def _convert(onnx_path: Path, metadata: ModelMetadata) -> Any:
    import openvino as ov

    model = ov.convert_model(os.fspath(onnx_path))
    # the same metadata JSON the ONNX carries, so an IR copied out of the bundle still says what it is
    model.set_rt_info(metadata.to_json(), ONNX_METADATA_KEY)
    return model


def export_fp32(onnx_path: Path, xml_path: Path, metadata: ModelMetadata) -> None:
    """IR with FP32 weights: the reference model in OpenVINO's own format (``--to openvino --precision fp32``)."""
    import openvino as ov

    xml_path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(_convert(onnx_path, metadata), os.fspath(xml_path), compress_to_fp16=False)


def export_fp16(onnx_path: Path, xml_path: Path, metadata: ModelMetadata) -> None:
    """IR with FP16-compressed weights (CPU decompresses to f32 at load; GPUs/NPUs compute in f16)."""
    import openvino as ov

    xml_path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(_convert(onnx_path, metadata), os.fspath(xml_path), compress_to_fp16=True)


def bf16_status() -> tuple[bool, str]:
    """(True, "") when OpenVINO's CPU plugin executes bf16 here (AVX512-BF16 / AMX), else (False, why).

    Elsewhere it would silently run f32: an ``openvino-bf16`` artifact gated there would be the FP16 IR's
    numbers under another name, so it is not built (and the runtime refuses to run one, see backends/ov.py).
    """
    import openvino as ov

    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" not in caps:
        return False, f"this CPU has no bf16 execution in OpenVINO (capabilities: {', '.join(caps)})"
    return True, ""


def export_int8(onnx_path: Path, xml_path: Path, metadata: ModelMetadata, calib_tensors: np.ndarray,
                labelled: tuple[np.ndarray, np.ndarray] | None = None, accuracy_control: str = "auto",
                say: Callable[[str], None] = log.info, tolerances: Any = None,
                target_sensitivity: float | None = None) -> dict[str, Any]:
    """NNCF INT8 from the same real calibration images as the ONNX INT8.

    ``accuracy_control``: "off" = plain ``nncf.quantize``; "on" = ``nncf.quantize_with_accuracy_control``
    on the labelled set; "auto" = plain first, accuracy control only when the plain result would fail the
    parity gate (``tolerances``: the gate's, all checks; it re-evaluates the model per reverted layer
    group: minutes on 2 CPU cores, so it runs only where it can help). Its metric is the share of labelled
    images whose benign/review decision agrees with FP32 after threshold recalibration, its allowed drop
    the gate's ``max_flip_rate`` (AUC barely moves under INT8 noise while decisions near the threshold
    do, so AUC would never trigger it).
    """
    import nncf
    import openvino as ov

    from dermsort.train.metrics import auc_score

    from .calibration import nncf_dataset
    from .parity import DEFAULT_TARGET_SENSITIVITY, Tolerances, compare

    tolerances = tolerances or Tolerances()
    target = target_sensitivity or DEFAULT_TARGET_SENSITIVITY
    max_flip_rate = tolerances.max_flip_rate

    if accuracy_control not in ACCURACY_CONTROL:
        raise ValueError(f"accuracy_control must be one of {ACCURACY_CONTROL}")
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    fp32 = _convert(onnx_path, metadata)
    calibration = nncf_dataset(calib_tensors)
    subset = int(len(calib_tensors))
    info: dict[str, Any] = {"method": "nncf.quantize", "preset": "performance (symmetric)",
                            "bias_correction": "full (fast_bias_correction=False)",
                            "calibration_images": subset, "accuracy_control": "off"}
    started = time.perf_counter()
    mal_idx = metadata.malignant_indices()
    core = ov.Core()
    cpu_f32 = {"INFERENCE_PRECISION_HINT": "f32"}  # as the runtime backend runs it on CPU

    def p_malignant(model: Any, tensors: np.ndarray) -> np.ndarray:
        compiled = core.compile_model(model, "CPU", cpu_f32) if not hasattr(model, "create_infer_request") else model
        return np.concatenate([np.asarray(compiled(tensors[i:i + 16])[compiled.outputs[0]])[:, mal_idx].sum(axis=1)
                               for i in range(0, len(tensors), 16)])

    can_control = labelled is not None and 0 < int(labelled[1].sum()) < len(labelled[1])
    if accuracy_control == "on" and not can_control:
        say("openvino-int8: accuracy control needs a labelled set with both classes; using plain nncf.quantize")
    # full (not fast) bias correction: on the v2 default model it halved the decision flips of plain PTQ
    # (41 -> 24 of 1,276 gate images; `python -m studies.quant_study`, docs/EXPORT.md) for ~1 min more
    # the not-dermoscopy gate stays float (export/onnx_export.py gate_nodes says why)
    ignored = (nncf.IgnoredScope(patterns=[f"^(?!{re.escape(CLASSIFIER_SCOPE)}).*"], validate=False)
               if metadata.gate.enabled else nncf.IgnoredScope())
    info["ignored_scope"] = "not-dermoscopy gate ops (outside /model/)" if metadata.gate.enabled else "none"
    quantized = nncf.quantize(fp32, calibration, subset_size=subset, preset=nncf.QuantizationPreset.PERFORMANCE,
                              fast_bias_correction=False, ignored_scope=ignored) \
        if accuracy_control != "on" or not can_control else None
    if can_control and accuracy_control in ("auto", "on"):
        tensors, labels = labelled  # type: ignore[misc]
        p_ref = p_malignant(fp32, tensors)

        def agreement(compiled: Any, items: Any) -> float:
            index = np.asarray([i for _, i in items], dtype=int)
            p_art = p_malignant(compiled, tensors[index])
            # NNCF also scores subsets (ranking); one without a malignant image cannot be recalibrated
            recalibrate = bool(labels[index].any())
            result = compare("candidate", p_art, p_ref[index], labels[index], metadata.threshold,
                             recalibrate=recalibrate)
            return 1.0 - float(result.flip_rate)

        info["auc_fp32"] = auc_score(labels, p_ref)
        needs_control = accuracy_control == "on"
        if quantized is not None:
            p_plain = p_malignant(quantized, tensors)
            plain = compare("openvino-int8", p_plain, p_ref, labels, metadata.threshold, tolerances=tolerances,
                            target_sensitivity=target)
            info.update(auc_plain_int8=plain.auc, flip_rate_plain_int8=plain.flip_rate,
                        plain_int8_gate=plain.status)
            needs_control = not plain.passed
        if needs_control:
            say(f"openvino-int8: plain INT8 {info.get('plain_int8_gate', 'not run')} the gate (flips "
                f"{100 * info.get('flip_rate_plain_int8', 0):.1f} % of decisions); "
                "running nncf.quantize_with_accuracy_control (slow on few CPU cores)")
            from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

            validation = nncf.Dataset([(tensors[i:i + 1], i) for i in range(len(labels))])
            quantized = nncf.quantize_with_accuracy_control(
                fp32, calibration, validation, validation_fn=agreement, max_drop=max_flip_rate,
                drop_type=nncf.DropType.ABSOLUTE, subset_size=subset, preset=nncf.QuantizationPreset.PERFORMANCE,
                fast_bias_correction=False, ignored_scope=ignored, advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                    ranking_subset_size=min(len(labels), 300)))
            final = compare("openvino-int8", p_malignant(quantized, tensors), p_ref, labels, metadata.threshold,
                            tolerances=tolerances, target_sensitivity=target)
            info.update(method="nncf.quantize_with_accuracy_control", accuracy_control="ran (metric: decision "
                        "agreement with FP32 after recalibration)", flip_rate_int8=final.flip_rate, auc_int8=final.auc,
                        reverted_to_float=_count_float_layers(quantized, fp32))
        else:
            info["accuracy_control"] = "not needed: plain INT8 passes the parity gate"
    info["seconds"] = round(time.perf_counter() - started, 1)
    quantized.set_rt_info(metadata.to_json(), ONNX_METADATA_KEY)
    ov.save_model(quantized, os.fspath(xml_path), compress_to_fp16=False)
    return info


def _count_float_layers(quantized: Any, fp32: Any) -> str:
    """'<quantized convolutions/matmuls> of <all>' for the report."""
    kinds = ("Convolution", "GroupConvolution", "MatMul")
    total = sum(1 for op in fp32.get_ops() if op.get_type_name() in kinds)
    fq = sum(1 for op in quantized.get_ops() if op.get_type_name() == "FakeQuantize")
    return f"{fq} FakeQuantize nodes for {total} conv/matmul layers"


# ----------------------------------------------------------------------------- builders (formats.TARGETS rows)

@formats.builds("openvino-fp32")
def _build_fp32(job: formats.BuildJob, row: formats.Target) -> None:
    export_fp32(job.reference, job.work / row.path, job.metadata)


@formats.builds("openvino-fp16")
def _build_fp16(job: formats.BuildJob, row: formats.Target) -> None:
    export_fp16(job.reference, job.work / row.path, job.metadata)


@formats.builds("openvino-bf16")
def _build_bf16(job: formats.BuildJob, row: formats.Target) -> None:
    ok, why = bf16_status()
    if not ok:
        raise formats.Skip(why)
    if not (job.work / row.path).is_file():  # bf16 runs the FP16 IR; build it when fp16 was not asked for
        export_fp16(job.reference, job.work / row.path, job.metadata)


@formats.builds("openvino-int8")
def _build_int8(job: formats.BuildJob, row: formats.Target) -> formats.Built:
    return formats.Built(quantization=export_int8(
        job.reference, job.work / row.path, job.metadata, job.calib_tensors, job.labelled, job.accuracy_control,
        job.say, tolerances=job.tolerances, target_sensitivity=job.target_sensitivity))
