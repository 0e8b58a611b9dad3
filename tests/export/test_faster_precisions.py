"""The faster candidates `auto` may pick, exported, gated and thresholded like any artifact:
ONNX Runtime INT8 in the U8S8 form and OpenVINO bf16 execution of the FP16 IR (a precision of its own).

Real export of test_export's tiny trained CNN on real images; real ONNX Runtime / OpenVINO sessions.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from test_export import CSVS, fake_train, tiny_checkpoint  # noqa: F401 - fixtures

from dermsort.export import api, formats, openvino_export, parity, verdict  # noqa: E402
from dermsort.runtime.bundle import load_bundle  # noqa: E402
from dermsort.runtime.engine import candidates, open_backend  # noqa: E402

pytest.importorskip("openvino", reason='OpenVINO export needs openvino: pip install "dermsort[export]"')
BF16, BF16_WHY = openvino_export.bf16_status()


@pytest.fixture(scope="module")
def fast_bundle(tiny_checkpoint, fake_train, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("precisions") / "bundle"
    api.export_bundle(tiny_checkpoint, out, to="onnx,openvino", precisions="fp32,fp16,bf16,int8", calib=CSVS,
                      calib_count=48, allow_parity_failure=True, latency_reps=2)
    return out


def test_u8s8_int8_is_uint8_activations_int8_weights_and_gated(fast_bundle):
    import onnx
    from onnx import TensorProto, numpy_helper

    bundle, _ = load_bundle(fast_bundle)
    names = {a.name: a for a in bundle.artifacts}
    assert {"onnx-int8", "onnx-int8-u8s8"} <= set(names)
    u8 = names["onnx-int8-u8s8"]
    assert u8.backend == "onnxruntime" and u8.precision == "int8" and u8.path == "model.int8-u8s8.onnx"
    # gated like any artifact: its own threshold and parity numbers against the FP32 reference
    assert u8.parity["status"] in ("passed", "failed") and u8.parity["reference"] == "onnx-fp32"
    assert u8.parity["n_images"] > 0 and u8.parity["threshold"] == pytest.approx(u8.threshold, abs=1e-6)
    proto = onnx.load(str(fast_bundle / u8.path))
    inits = {i.name: i for i in proto.graph.initializer}
    zero_point_types = {}
    for node in proto.graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) > 2 and node.input[2] in inits:
            zp = inits[node.input[2]]
            zero_point_types.setdefault(zp.data_type, []).append(numpy_helper.to_array(zp))
    assert TensorProto.UINT8 in zero_point_types, "activations must be quantised to uint8"
    # weights: DequantizeLinear of int8 initialisers, symmetric (zero point 0)
    weight_dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert weight_dq and all(inits[n.input[0]].data_type == TensorProto.INT8 for n in weight_dq)
    quant = bundle.extra["export"]["quantization"]
    assert quant["onnx-int8-u8s8"]["form"] == "u8s8" and quant["onnx-int8"]["form"] == "s8s8"
    # the S8S8 file stays the TensorRT source; only it gets the TensorRT graph check
    assert "tensorrt_compatibility" in names["onnx-int8"].parity
    assert "tensorrt_compatibility" not in u8.parity


@pytest.mark.skipif(not BF16, reason=f"OpenVINO bf16 execution needs AVX512-BF16/AMX: {BF16_WHY}")
def test_bf16_is_the_fp16_ir_executed_in_bf16_with_its_own_gate_and_threshold(fast_bundle):
    bundle, _ = load_bundle(fast_bundle)
    names = {a.name: a for a in bundle.artifacts}
    bf16, fp16 = names["openvino-bf16"], names["openvino-fp16"]
    assert (bf16.path, bf16.extra_files, bf16.sha256) == (fp16.path, fp16.extra_files, fp16.sha256)
    assert bf16.precision == "bf16" and bf16.backend == "openvino"
    # the gate ran it in bf16 (recorded), and it has a verdict and threshold of its own
    assert bf16.parity["backend"]["execution_precision"] == "bf16"
    assert fp16.parity["backend"]["execution_precision"] == "f32"
    assert bf16.parity["status"] in ("passed", "failed") and bf16.parity["threshold"] == pytest.approx(bf16.threshold, abs=1e-6)
    assert bf16.parity["max_abs_diff"] != fp16.parity["max_abs_diff"]  # not the f32 run under another name
    # the runtime executes each as its precision says
    for precision, expect in (("bf16", "bf16"), ("fp16", "f32")):
        backend = open_backend(bundle, "openvino", precision)
        try:
            assert backend.artifact.precision == precision and backend.describe()["execution_precision"] == expect
            batch = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
            assert backend.predict(batch).shape == (2, 2)
        finally:
            backend.close()
    # auto sees both new candidates, each on the backend its gate ran it on
    pairs = {(b, a.name) for b, a in candidates(bundle)}
    assert {("openvino", "openvino-bf16"), ("onnxruntime", "onnx-int8-u8s8")} <= pairs
    assert ("openvino", "onnx-int8-u8s8") not in pairs


@pytest.mark.skipif(not BF16, reason=f"OpenVINO bf16 execution needs AVX512-BF16/AMX: {BF16_WHY}")
def test_a_rejected_bf16_never_removes_the_fp16_files_it_shares(fast_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(fast_bundle, copy)
    bundle, _ = load_bundle(copy)
    arts = [a for a in bundle.artifacts if a.name in ("onnx-fp32", "openvino-fp16", "openvino-bf16")]
    results = {a.name: parity.ParityResult(artifact=a.name, status="reference" if a.name == "onnx-fp32" else "passed")
               for a in arts}
    results["openvino-bf16"] = parity.ParityResult(artifact="openvino-bf16", status="failed", message="too many flips")
    kept, rejected = verdict.apply_verdicts(copy, arts, results, False, "", lambda s: None)
    assert [a.name for a in kept] == ["onnx-fp32", "openvino-fp16"] and [r["name"] for r in rejected] == ["openvino-bf16"]
    assert (copy / "openvino" / "model_fp16.xml").is_file() and (copy / "openvino" / "model_fp16.bin").is_file()
    # rejected alone (fp16 rejected too): the files go
    results["openvino-fp16"] = parity.ParityResult(artifact="openvino-fp16", status="failed", message="x")
    verdict.apply_verdicts(copy, arts, results, False, "", lambda s: None)
    assert not (copy / "openvino" / "model_fp16.xml").exists()


def test_targets_table_has_the_new_precisions():
    rows = {t.name: t for t in formats.select(["onnx", "openvino"], ["int8", "bf16"])}
    assert rows["onnx-int8-u8s8"].precision == "int8" and rows["openvino-bf16"].precision == "bf16"
    assert rows["openvino-bf16"].path == formats.target("openvino-fp16").path
    assert "bf16" in formats.PRECISIONS


def test_every_target_row_has_a_builder_registered_in_its_own_module():
    import subprocess
    import sys

    for row in formats.TARGETS:
        if row.name == formats.REFERENCE:  # written from the checkpoint itself, before any builder runs
            continue
        build, _ready = formats.builder(row)
        assert build.__module__ == row.module, row.name
    # the ONNX builders alone load neither OpenVINO nor TensorRT (their targets import them when built)
    code = ("import sys; from dermsort.export import api, formats\n"
            "[formats.builder(r) for r in formats.select(['onnx'], list(formats.PRECISIONS))[1:]]\n"
            "print(sorted(m for m in ('openvino', 'tensorrt', 'nncf') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
