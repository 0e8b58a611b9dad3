"""Export: a tiny real CNN, trained for a few steps on real dermoscopy images, through every path that
runs here (ONNX FP32/FP16/INT8, OpenVINO FP16/INT8), calibrated on real images, gated on a labelled
held-out split through the real runtime backends; TensorRT where a GPU and tensorrt exist."""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
if not (DATA / "ham10000-sample" / "labels.csv").is_file():  # pragma: no cover - conftest exits first
    raise RuntimeError(f"real test data not found at {DATA} (expected ../shared/data beside the repo)")

torch = pytest.importorskip("torch", reason='export tests need torch: pip install "dermsort[export]"')

from dermsort.export import api, calibration, engines, formats, parity  # noqa: E402
from dermsort.export.cli import EXIT_INCOMPLETE, export  # noqa: E402
from dermsort.runtime.backends.base import create_backend  # noqa: E402
from dermsort.runtime.bundle import load_bundle  # noqa: E402
from dermsort.runtime.errors import BackendUnavailable, DermsortError, ModelError  # noqa: E402
from dermsort.runtime.metadata import ONNX_METADATA_KEY, ModelMetadata, PreprocessSpec, Validation  # noqa: E402
from dermsort.runtime.preprocess import preprocess_file  # noqa: E402

CSVS = [str(DATA / d / "labels.csv") for d in ("ham10000-sample", "ph2", "kaggle-melanoma-sample")]
SPEC = PreprocessSpec(input_size=64, resize_shorter=64)
CPU_TARGETS = ["onnx-fp16", "onnx-int8", "openvino-fp16", "openvino-int8"]


class TinyCNN(torch.nn.Module):
    """Three conv blocks with BatchNorm: quantises like a real CNN, trains in seconds."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        nn = torch.nn

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.features = nn.Sequential(block(3, 8), block(8, 16), block(16, 32))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def _fake_train_models() -> types.ModuleType:
    """Stands in for dermsort.train.models (the contract: build_model(arch, n, pretrained) -> logits, with_tta)."""
    module = types.ModuleType("dermsort.train.models")

    def build_model(architecture: str, num_classes: int, pretrained: bool = False):
        if architecture != "test_tiny_cnn":
            raise ValueError(f"unknown architecture {architecture!r}")
        return TinyCNN(num_classes)

    module.build_model = build_model
    module.with_tta = lambda model, mode: model  # no test-time flips in these checkpoints
    return module


def _train_rows(limit: int | None = None) -> list[tuple[Path, int]]:
    rows = []
    for path in CSVS:
        rows += [(r.path, r.malignant) for r in calibration.read_labels(path, "train")]
    return rows[:limit] if limit else rows


def _save_checkpoint(path: Path, model, architecture: str, metadata: ModelMetadata) -> Path:
    torch.save({"format": "dermsort-checkpoint", "version": 1, "architecture": architecture, "num_classes": 2,
                "state_dict": model.state_dict(), "metadata": metadata.to_dict(),
                "val": {"p_malignant": [], "malignant": []}, "test": {}}, path)
    return path


def train_tiny_checkpoint(path: Path, steps: int, model_id: str) -> Path:
    """A tiny CNN trained for ``steps`` steps on the real train splits (so its outputs spread like a model's),
    saved as a checkpoint at ``path`` with the threshold training would set: 90 % sensitivity on its own data."""
    rows = _train_rows()
    x = torch.from_numpy(np.stack([preprocess_file(p, SPEC)[0] for p, _ in rows]))
    y = torch.tensor([m for _, m in rows])
    torch.manual_seed(0)
    model = TinyCNN(2)
    optimiser = torch.optim.AdamW(model.parameters(), 1e-2)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (32,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        p_malignant = torch.softmax(model(x), 1)[:, 1].numpy()
    threshold = float(np.quantile(p_malignant[y.numpy() == 1], 0.1))
    metadata = ModelMetadata(model_id=model_id, architecture="test_tiny_cnn", classes=["benign", "malignant"],
                             malignant_classes=["malignant"], threshold=threshold, preprocess=SPEC,
                             validation=Validation(split="train (test model)"))
    return _save_checkpoint(path, model, "test_tiny_cnn", metadata)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny CNN trained for 60 steps on the real train splits."""
    return train_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint.pt", 60, "test-tiny-cnn")


@pytest.fixture(scope="module")
def fake_train():
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "dermsort.train.models", _fake_train_models())
        yield mp


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, fake_train, tmp_path_factory) -> Path:
    """Every CPU path, gated on the val splits; failures kept (as recorded overrides) so every file can be inspected."""
    out = tmp_path_factory.mktemp("export") / "bundle"
    api.export_bundle(tiny_checkpoint, out, to="onnx,openvino,tensorrt", precisions="fp32,fp16,int8", calib=CSVS,
                      calib_count=48, allow_parity_failure=True, latency_reps=2)
    return out


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


# --------------------------------------------------------------------------- every path

def test_every_cpu_path_is_exported_gated_and_reported(exported):
    bundle, _ = load_bundle(exported)
    names = [a.name for a in bundle.artifacts]
    assert names[0] == "onnx-fp32" and bundle.reference == "model.onnx"
    assert set(CPU_TARGETS) <= set(names), bundle.extra["export"]["failed"]
    assert bundle.extra["export"]["failed"] == {}
    gate = bundle.extra["export"]["parity"]
    assert gate["ran"] and gate["n_images"] >= 50 and gate["n_malignant"] >= 10 and gate["split"] == "val"
    # the gate set is the val split of every CSV, counted per data set
    expected = {Path(c).parent.name: calibration.read_labels(c, "val") for c in CSVS}
    assert gate["per_dataset"] == {name: {"n_images": len(rows), "n_malignant": sum(r.malignant for r in rows)}
                                   for name, rows in sorted(expected.items())}
    assert gate["tolerances"] == {"max_sensitivity_drop": 0.01, "max_flip_rate": 0.02, "max_specificity_drop": 0.02}
    assert gate["target_sensitivity"] == 0.95 and "floor(" in gate["rules"]
    for art in bundle.artifacts[1:]:
        p = art.parity
        assert p["status"] in ("passed", "failed") and p["recalibrated"] is True
        assert p["tolerances"] == gate["tolerances"]
        assert 0.5 < p["auc"] <= 1 and p["n_images"] == gate["n_images"]
        assert p["flip_rate"] == pytest.approx(p["flips"] / p["n_images"], abs=1e-6)
        assert p["flips"] == p["flips_to_benign"] + p["flips_to_review"]
        assert p["malignant_to_benign"] <= p["flips_to_benign"] and p["benign_to_review"] <= p["flips_to_review"]
        assert p["target_sensitivity"] == 0.95 and p["malignant_to_benign_allowed"] >= 0
        assert art.threshold == pytest.approx(p["threshold"], abs=1e-6)
        # the verdict follows the numbers (all four checks), and a kept failure is a recorded override
        assert set(p["checks"]) == {"sensitivity_drop", "malignant_to_benign", "specificity_drop", "flip_rate"}
        assert (p["status"] == "passed") == all(p["checks"].values())
        assert art.accepted == (p["status"] == "passed")
        assert art.accepted or art.override.startswith("--allow-parity-failure")
        # recalibrated on the gate set: sensitivity never below the reference's there
        assert p["sensitivity"] >= p["sensitivity_reference"] - 1e-9
    # FP16 is near-lossless: it must pass, at a threshold within its rounding of the reference
    for name in ("onnx-fp16", "openvino-fp16"):
        fp16 = bundle.get(name)
        assert fp16.accepted and fp16.parity["max_abs_diff"] < 1e-2 and fp16.parity["flips"] == 0
    # TensorRT: no GPU/tensorrt here -> recorded as skipped with the reason, never silently absent
    from dermsort.export.tensorrt_export import tensorrt_status

    if not tensorrt_status()[0]:
        for name in ("tensorrt-fp16", "tensorrt-int8"):
            assert bundle.extra["export"]["skipped"][name].startswith("skipped: ")
            assert "export-engines" in bundle.extra["export"]["skipped"][name]


def test_report_has_size_latency_parity_and_where_it_ran(exported):
    report = json.loads((exported / "export_report.json").read_text())
    md = (exported / "export_report.md").read_text()
    rows = {r["name"]: r for r in report["artifacts"]}
    assert set(rows) >= {"onnx-fp32", *CPU_TARGETS}
    for name, row in rows.items():
        assert row["size_bytes"] > 1000
        assert row["latency"]["batch1_ms"] > 0 and row["latency"]["batch16_ms"] > 0
        assert row["latency"]["backend"]["backend"] == formats.target(name).backend
        assert name in md
    assert report["parity"]["ran"] and "| onnx-int8 |" in md
    assert "skipped" in md or report["skipped"] == {}
    # the gate's numbers, rules and per-data-set basis are in the report, not only in the manifest
    for text in ("to benign", "to review", "malignant to benign (allowed)", "benign to review", "(a) safety",
                 "(b) work: specificity drop <= 2.0 pp", "(c) churn", "<= 2.0 % of the images", "floor(",
                 "## TensorRT readiness", "onnx-int8 (`model.int8.onnx`, opset 17): passed"):
        assert text in md, text
    for name, counts in report["parity"]["per_dataset"].items():
        assert f"  - {name}: {counts['n_images']} images, {counts['n_malignant']} malignant" in md
    assert report["calibration"]["per_dataset"] == {"ham10000-sample": 16, "kaggle-melanoma-sample": 16, "ph2": 16}


# --------------------------------------------------------------------------- artifact contracts

def test_reference_onnx_contract_and_metadata_readable_by_onnxruntime(exported):
    import onnx
    import onnxruntime as ort

    bundle, _ = load_bundle(exported)
    proto = onnx.load(str(exported / "model.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == ["probabilities"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch axis
    session = ort.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"])
    stored = ModelMetadata.from_json(session.get_modelmeta().custom_metadata_map[ONNX_METADATA_KEY])
    assert stored.to_dict() == bundle.metadata.to_dict() and stored.output == "probabilities"
    rows = calibration.read_labels(CSVS[0], "test")[:5]
    batch = np.stack([preprocess_file(r.path, SPEC)[0] for r in rows])
    for size in (1, 5):  # softmax inside the graph: rows are probabilities, at any batch size
        probs = session.run(None, {"input": batch[:size]})[0]
        assert probs.shape == (size, 2) and np.allclose(probs.sum(axis=1), 1, atol=1e-5) and (probs >= 0).all()
    check = bundle.get("onnx-fp32").parity["torch_check"]
    assert check["torch_max_abs_diff"] <= check["torch_atol"] == 1e-4 and check["onnx_checker"] == "passed"


def test_fp16_and_int8_onnx_are_what_they_claim(exported):
    import onnx
    from onnx import TensorProto

    half = onnx.load(str(exported / "model.fp16.onnx"))
    assert any(t.data_type == TensorProto.FLOAT16 for t in half.graph.initializer)
    # keep_io_types: callers feed and read float32 as with the reference
    assert half.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert half.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    int8 = onnx.load(str(exported / "model.int8.onnx"))
    ops = [n.op_type for n in int8.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops  # QDQ format (TensorRT explicit quantization)
    inits = {t.name: t for t in int8.graph.initializer}
    conv_scales = [inits[n.input[1]] for n in int8.graph.node if n.op_type == "DequantizeLinear"
                   and n.input[0] in inits and inits[n.input[0]].data_type == TensorProto.INT8
                   and len(inits[n.input[0]].dims) == 4]
    assert conv_scales and all(len(s.dims) == 1 and s.dims[0] > 1 for s in conv_scales)  # per-channel weights
    zero_points = [onnx.numpy_helper.to_array(inits[n.input[2]]) for n in int8.graph.node
                   if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits]
    assert zero_points and all((z == 0).all() and z.dtype == np.int8 for z in zero_points)  # symmetric int8
    for proto in (half, int8):
        meta = {p.key: p.value for p in proto.metadata_props}
        assert ModelMetadata.from_json(meta[ONNX_METADATA_KEY]).model_id == "test-tiny-cnn"
    # TensorRT-ready: no INT32 (bias) DequantizeLinear, symmetric int8, opset 17, allow-listed ops
    from dermsort.export.trt_compat import trt_compatibility_problems

    assert not [n for n in int8.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                and inits[n.input[0]].data_type == TensorProto.INT32]
    assert trt_compatibility_problems(int8) == []
    assert [o.version for o in int8.opset_import if o.domain in ("", "ai.onnx")] == [17]
    info = _manifest(exported)["export"]["quantization"]
    assert info["onnx-int8"]["format"] == "QDQ" and info["onnx-int8"]["per_channel"] is True
    assert info["onnx-int8"]["extra_options"] == {"ActivationSymmetric": True, "WeightSymmetric": True,
                                                  "QuantizeBias": False}
    # the check's result is recorded with the artifact (kept or rejected) in the manifest
    recorded = [a["parity"] for a in _manifest(exported)["artifacts"] if a["name"] == "onnx-int8"] + [
        r["parity"] for r in _manifest(exported)["export"]["rejected"] if r["name"] == "onnx-int8"]
    assert recorded and recorded[0]["tensorrt_compatibility"]["passed"] is True
    assert recorded[0]["tensorrt_compatibility"]["problems"] == []
    assert info["openvino-int8"]["calibration_images"] == info["onnx-int8"]["calibration_images"] > 0


def test_trt_check_fails_a_bias_quantized_graph_of_the_same_model(exported, tmp_path):
    """ONNX Runtime's default (QuantizeBias=True) writes INT32 bias DequantizeLinear: the check must refuse it."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from dermsort.export.onnx_export import QUANT_EXTRA_OPTIONS
    from dermsort.export.trt_compat import trt_compatibility_problems

    rows = calibration.read_labels(CSVS[0], "train")[:4]
    tensors = np.stack([preprocess_file(r.path, SPEC)[0] for r in rows])
    dst = tmp_path / "bias.int8.onnx"
    quantize_static(str(exported / "model.onnx"), str(dst), calibration.ort_reader(tensors),
                    quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, extra_options={**QUANT_EXTRA_OPTIONS, "QuantizeBias": True})
    problems = trt_compatibility_problems(str(dst))
    assert problems and any("INT32" in p for p in problems)


def test_openvino_irs_load_and_carry_metadata(exported):
    import openvino as ov

    core = ov.Core()
    fp16 = core.read_model(str(exported / "openvino" / "model_fp16.xml"))
    int8 = core.read_model(str(exported / "openvino" / "model_int8.xml"))
    assert any(op.get_type_name() == "FakeQuantize" for op in int8.get_ops())  # NNCF inserted quantizers
    assert not any(op.get_type_name() == "FakeQuantize" for op in fp16.get_ops())
    for model in (fp16, int8):
        assert ModelMetadata.from_json(model.get_rt_info(ONNX_METADATA_KEY).astype(str)).model_id == "test-tiny-cnn"


def test_calibration_uses_real_preprocessed_images_not_the_gate_set():
    gate_rows, _ = calibration.gate_set([], CSVS)
    files = calibration.calibration_files(CSVS, 30, exclude=[r.path for r in gate_rows])
    assert len(files) == 30 and not {r.path for r in gate_rows} & set(files)
    assert {f.parent.parent.name for f in files} == {"ham10000-sample", "ph2", "kaggle-melanoma-sample"}
    tensors, kept = calibration.load_tensors(files[:4], SPEC, skip_concerns=True)
    reader = calibration.ort_reader(tensors, batch_size=2)
    fed = np.concatenate([reader.get_next()["input"], reader.get_next()["input"]])
    assert reader.get_next() is None
    assert np.array_equal(fed, np.stack([preprocess_file(files[i], SPEC)[0] for i in kept]))


# --------------------------------------------------------------------------- manifest checksums

def test_manifest_checksums_are_verified_by_the_runtime(exported, tmp_path):
    bundle, _ = load_bundle(exported)
    rows = calibration.read_labels(CSVS[1], "test")[:3]
    batch = np.stack([preprocess_file(r.path, SPEC)[0] for r in rows])
    for art in bundle.artifacts:
        bundle.verify(art)
        with create_backend(art.backend, bundle, art) as backend:
            probs = backend.predict(batch)
        assert probs.shape == (3, 2) and np.allclose(probs.sum(axis=1), 1, atol=1e-2)
    copy = tmp_path / "bundle"
    shutil.copytree(exported, copy)
    tampered, _ = load_bundle(copy)
    for rel in ("model.int8.onnx", "openvino/model_int8.bin"):
        data = bytearray((copy / rel).read_bytes())
        data[len(data) // 2] ^= 0x01
        (copy / rel).write_bytes(bytes(data))
    with pytest.raises(ModelError, match="checksum mismatch"):
        tampered.verify(tampered.get("onnx-int8"))
    with pytest.raises(ModelError, match="checksum mismatch"):
        tampered.verify(tampered.get("openvino-int8"))  # the .bin beside the .xml is covered too
    tampered.verify(tampered.get("onnx-fp32"))  # untouched files still pass


# --------------------------------------------------------------------------- the parity gate

def _perturbing_fp16(monkeypatch, scale: float = 0.6):
    """Make the FP16 export deliberately broken: its weights perturbed with seeded noise."""
    import onnx
    from onnx import numpy_helper

    from dermsort.export import onnx_export

    original = onnx_export.convert_fp16

    def broken(src, dst, metadata):
        original(src, dst, metadata)
        proto = onnx.load(str(dst))
        rng = np.random.default_rng(0)
        for init in proto.graph.initializer:
            arr = numpy_helper.to_array(init)
            if arr.dtype == np.float16 and arr.ndim == 4:
                noisy = arr.astype(np.float32) * (1 + scale * rng.standard_normal(arr.shape))
                init.CopyFrom(numpy_helper.from_array(noisy.astype(np.float16), init.name))
        onnx.save(proto, str(dst))

    monkeypatch.setattr(onnx_export, "convert_fp16", broken)


def test_parity_gate_rejects_a_perturbed_artifact_with_a_clear_message(tiny_checkpoint, fake_train, tmp_path,
                                                                      monkeypatch):
    from click.testing import CliRunner

    _perturbing_fp16(monkeypatch)
    out = tmp_path / "bundle"
    result = CliRunner().invoke(export, [str(tiny_checkpoint), "--out", str(out), "--to", "onnx", "--precision",
                                         "fp16", "--calib", ",".join(CSVS), "--calib-count", "16"])
    assert result.exit_code == EXIT_INCOMPLETE, result.output
    assert "onnx-fp16 REJECTED by the parity gate" in result.output and "decision flips" in result.output
    bundle, _ = load_bundle(out)
    assert [a.name for a in bundle.artifacts] == ["onnx-fp32"]  # kept out of the manifest...
    assert not (out / "model.fp16.onnx").exists()  # ...and out of the bundle
    rejected = bundle.extra["export"]["rejected"]
    assert [r["name"] for r in rejected] == ["onnx-fp16"] and rejected[0]["parity"]["checks"]["flip_rate"] is False
    assert "REJECTED" in (out / "export_report.md").read_text()


def test_allow_parity_failure_keeps_the_artifact_and_records_the_override(tiny_checkpoint, fake_train, tmp_path,
                                                                         monkeypatch):
    from dermsort.runtime.engine import candidates

    _perturbing_fp16(monkeypatch)
    bundle = api.export_bundle(tiny_checkpoint, tmp_path / "bundle", to="onnx", precisions="fp16", calib=CSVS,
                               calib_count=16, allow_parity_failure=True, latency_reps=2)
    art = bundle.get("onnx-fp16")
    assert art.accepted is False and art.parity["status"] == "failed"
    assert art.override.startswith("--allow-parity-failure: onnx-fp16 REJECTED")
    bundle.verify(art)
    # a rejected artifact never runs unless the user explicitly allows it (--allow-rejected-artifact)
    assert ("onnxruntime", "onnx-fp16") not in [(b, a.name) for b, a in candidates(bundle, "onnxruntime", "fp16")]
    assert ("onnxruntime", "onnx-fp16") in [(b, a.name) for b, a in candidates(bundle, "onnxruntime", "fp16",
                                                                                  allow_rejected=True)]
    assert bundle.extra["export"]["rejected"] == []


def test_recalibration_reproduces_the_reference_for_a_monotone_model_and_guards_sensitivity():
    rng = np.random.default_rng(1)
    malignant = np.r_[np.ones(30, int), np.zeros(270, int)]
    p_ref = np.clip(np.r_[rng.beta(5, 2, 30), rng.beta(2, 5, 270)], 0, 1)
    t_ref = 0.3  # from training: not tight on this set
    same = parity.compare("same", p_ref.copy(), p_ref, malignant, t_ref)
    shifted = parity.compare("shifted", p_ref ** 1.5, p_ref, malignant, t_ref)  # monotone drift (e.g. INT8 offset)
    for result in (same, shifted):
        assert result.passed and result.flips == 0 and result.sensitivity == result.sensitivity_reference
    assert shifted.flips_at_reference_threshold > 0  # without recalibration the drift would flip decisions
    noisy = parity.compare("noisy", np.clip(p_ref + rng.normal(0, 0.15, 300), 0, 1), p_ref, malignant, t_ref)
    assert not noisy.passed and not noisy.checks["flip_rate"] and "REJECTED" in noisy.message
    # fixed thresholds (no recalibration): the sensitivity check is what catches a drift downwards
    lowered = parity.compare("lowered", p_ref * 0.8, p_ref, malignant, t_ref, recalibrate=False)
    assert not lowered.checks["sensitivity_drop"] and "sensitivity" in lowered.message
    # the threshold sits inside a score gap, not on a malignant image's score (the gate recalibrates
    # with the package's one picker, dermsort.train.metrics.choose_threshold, capped at the reference's benign count)
    from dermsort.train.metrics import choose_threshold

    max_benign = int((p_ref < t_ref).sum())
    t = choose_threshold(malignant, p_ref, 0.9, max_benign=max_benign)
    assert not np.isclose(p_ref, t).any() and (p_ref[malignant == 1] >= t).mean() >= 0.9
    assert (p_ref < t).sum() <= max_benign and same.threshold == pytest.approx(
        choose_threshold(malignant, p_ref, same.sensitivity_reference, max_benign=max_benign))


# --------------------------------------------------------------------------- fallbacks, unverified, atomicity

def test_torchvision_checkpoint_without_labelled_set_is_marked_unverified(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setitem(sys.modules, "dermsort.train.models", None)  # train/ not installed -> torchvision fallback
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(weights=None, num_classes=2).eval()
    meta = ModelMetadata(model_id="tv-mnv3", architecture="mobilenet_v3_small", classes=["benign", "malignant"],
                         malignant_classes=["malignant"], threshold=0.5, preprocess=SPEC)
    ckpt = _save_checkpoint(tmp_path / "tv.pt", model, "mobilenet_v3_small", meta)
    bundle = api.export_bundle(ckpt, tmp_path / "bundle", to="onnx", precisions="fp32,fp16",
                               calib=str(DATA / "isic2020-unlabelled"), latency_reps=2)
    assert bundle.extra["export"]["checkpoint"]["builder"] == "torchvision"
    assert bundle.extra["export"]["parity"]["ran"] is False
    fp16 = bundle.get("onnx-fp16")
    assert fp16.accepted is False and fp16.override.startswith("unverified: parity gate did not run")
    assert fp16.parity["status"] == "unverified" and bundle.get("onnx-fp32").accepted
    assert "did not run" in (tmp_path / "bundle" / "export_report.md").read_text()


def test_reexport_replaces_the_bundle_atomically_and_refuses_foreign_folders(tiny_checkpoint, fake_train, tmp_path):
    out = tmp_path / "bundle"
    first = api.export_bundle(tiny_checkpoint, out, to="onnx", precisions="fp32", calib=CSVS, calib_count=8,
                              latency_reps=2)
    (out / "stale-file").write_text("from an older bundle")
    second = api.export_bundle(tiny_checkpoint, out, to="onnx", precisions="fp32", calib=CSVS, calib_count=8,
                               latency_reps=2)
    assert not (out / "stale-file").exists() and second.created >= first.created
    # no temp/old folders, no lock left ("cache" is the test's own DERMSORT_CACHE_DIR: compiled models)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["bundle"]
    umask = os.umask(0o022)
    os.umask(umask)
    # mkdtemp makes private folders; a bundle must be readable by the sorter service's user
    assert (out.stat().st_mode & 0o777) == 0o777 & ~umask
    assert ((out / "manifest.json").stat().st_mode & 0o777) == 0o666 & ~umask
    # a crash between "rename old away" and "rename new in": the next run restores the old bundle
    out.rename(tmp_path / ".bundle.old-1-1")
    (tmp_path / ".bundle.new-dead").mkdir()
    api.recover(out)
    assert (out / "manifest.json").is_file() and sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == [
        "bundle"]
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"not a bundle")
    with pytest.raises(DermsortError, match="refusing to replace"):
        api.export_bundle(tiny_checkpoint, foreign, to="onnx", precisions="fp32", calib=CSVS, calib_count=8)
    assert (foreign / "holiday.jpg").exists()


def test_cli_rejects_unknown_targets_with_a_suggestion(tiny_checkpoint, tmp_path):
    from click.testing import CliRunner

    result = CliRunner().invoke(export, [str(tiny_checkpoint), "--out", str(tmp_path / "b"), "--to", "onx",
                                         "--calib", CSVS[0]])
    assert result.exit_code != 0 and isinstance(result.exception, DermsortError)
    assert "did you mean onnx" in str(result.exception)
    assert not (tmp_path / "b").exists()


# --------------------------------------------------------------------------- TensorRT (target device only)

def _tensorrt_here() -> tuple[bool, str]:
    from dermsort.export.tensorrt_export import tensorrt_status

    return tensorrt_status()


def test_export_engines_refuses_clearly_without_tensorrt(exported):
    ok, why = _tensorrt_here()
    if ok:
        pytest.skip(reason="tensorrt and a GPU are present: test_tensorrt_engines_on_gpu covers this machine")
    with pytest.raises(BackendUnavailable, match="cannot build TensorRT engines here"):
        engines.export_engines(exported, precisions="fp16,int8")
    assert why  # the reason shown to the user is not empty


@pytest.mark.gpu
def test_tensorrt_engines_on_gpu(exported, tmp_path):
    ok, why = _tensorrt_here()
    if not ok:
        pytest.skip(reason=f"TensorRT engines are built on the target GPU; not possible here: {why}")
    copy = tmp_path / "bundle"
    shutil.copytree(exported, copy)
    bundle = engines.export_engines(copy, precisions="fp16,int8", labelled=CSVS, allow_parity_failure=True)
    for precision in ("fp16", "int8"):
        art = bundle.get(f"tensorrt-{precision}")
        bundle.verify(art)
        assert set(art.built_for) >= {"gpu", "tensorrt", "compute_capability"} and art.parity["n_images"] > 0
        assert art.parity["build"]["profile"] == {"min": 1, "opt": 8, "max": 32}
    assert (copy / formats.TIMING_CACHE).stat().st_size > 0
    with open(copy / "export_report.json") as fh:
        assert "tensorrt-fp16" in {r["name"] for r in json.load(fh)["artifacts"]}


def _stub_tensorrt(monkeypatch, tensorrt_export, facts, build):
    """TensorRT present on a stub GPU described by ``facts``; engines come from ``build``."""
    monkeypatch.setattr(tensorrt_export, "tensorrt_status", lambda: (True, "stub"))
    monkeypatch.setattr(tensorrt_export, "device_info", lambda: dict(facts))
    monkeypatch.setattr(tensorrt_export, "build_engine", build)
    monkeypatch.setattr(tensorrt_export, "weakly_typed_flags_available", lambda: True)


def test_export_engines_keeps_the_fp16_engine_when_int8_fails(exported, tmp_path, monkeypatch):
    """Failures are isolated per precision: each engine is built into its own temp file and kept only on success."""
    from click.testing import CliRunner

    from dermsort.export import tensorrt_export
    from dermsort.export.cli import export_engines as engines_cli

    facts = {"gpu": "stub GPU", "compute_capability": "8.7", "tensorrt": "10.3.0"}
    targets = []

    def fake_build(onnx_path, engine_path, precision, input_name, input_size, timing_cache, max_batch=32):
        targets.append(engine_path)
        assert engine_path.name.endswith(".building") and engine_path.parent.name == "tensorrt"
        if precision == "int8":
            engine_path.write_bytes(b"half-written")  # a build that dies mid-way
            raise RuntimeError("INT8 tactic failed on this GPU\nmore detail")
        engine_path.write_bytes(b"stub engine " + precision.encode())
        timing_cache.write_bytes(b"stub cache")
        return {"source": onnx_path.name, "profile": {"min": 1, "opt": 8, "max": max_batch}}

    _stub_tensorrt(monkeypatch, tensorrt_export, facts, fake_build)
    copy = tmp_path / "bundle"
    shutil.copytree(exported, copy)
    bundle = engines.export_engines(copy, precisions="fp16,int8")
    assert len(targets) == 2  # int8 was attempted (its source ONNX is in the bundle)...
    engine = bundle.get("tensorrt-fp16")  # ...and failed without taking the FP16 engine with it
    bundle.verify(engine)
    assert (copy / engine.path).read_bytes() == b"stub engine fp16" and engine.built_for == facts
    assert "tensorrt-int8" not in [a.name for a in bundle.artifacts]
    failed = bundle.extra["engines"]["failed"]
    assert failed == {"tensorrt-int8": "RuntimeError: INT8 tactic failed on this GPU"}
    assert not list((copy / "tensorrt").glob("*.building*")) and not (copy / "tensorrt" / "model_int8.engine").exists()
    report = json.loads((copy / "export_report.json").read_text())
    assert "tensorrt-int8" in report["failed"] and "tensorrt-fp16" in {r["name"] for r in report["artifacts"]}
    # the CLI says a requested engine is missing (exit 3); with nothing built at all it is an error
    second = tmp_path / "bundle2"
    shutil.copytree(exported, second)
    result = CliRunner().invoke(engines_cli, [str(second), "--precision", "fp16,int8"])
    assert result.exit_code == EXIT_INCOMPLETE and "tensorrt-int8" in result.output
    with pytest.raises(ModelError, match="no TensorRT engine could be built.*INT8 tactic failed"):
        engines.export_engines(tmp_path / "bundle2", precisions="int8")


def test_labels_reader_reads_shared_data_format():
    rows = calibration.read_labels(CSVS[0], "val")
    with open(CSVS[0], newline="") as fh:
        expected = [r for r in csv.DictReader(fh) if r["split"] == "val"]
    assert len(rows) == len(expected) > 0 and all(r.path.is_file() for r in rows)
    assert sum(r.malignant for r in rows) == sum(int(r["malignant"]) for r in expected)


def test_export_engines_bookkeeping_with_a_stub_builder(exported, tmp_path, monkeypatch):
    """What export-engines does around TensorRT (copy, swap, manifest, built_for, skips) runs everywhere;
    the TensorRT API calls themselves are stubbed here and run for real in test_tensorrt_engines_on_gpu."""
    from dermsort.export import tensorrt_export

    facts = {"gpu": "stub GPU", "compute_capability": "8.7", "tensorrt": "10.3.0"}
    built_from = []

    def fake_build(onnx_path, engine_path, precision, input_name, input_size, timing_cache, max_batch=32):
        built_from.append((onnx_path.name, precision, input_name, input_size, max_batch))
        engine_path.parent.mkdir(parents=True, exist_ok=True)
        engine_path.write_bytes(b"stub engine " + precision.encode())
        timing_cache.write_bytes(b"stub cache")
        return {"source": onnx_path.name, "profile": {"min": 1, "opt": 8, "max": max_batch}}

    _stub_tensorrt(monkeypatch, tensorrt_export, facts, fake_build)
    copy = tmp_path / "bundle"
    shutil.copytree(exported, copy)
    (copy / "model.int8.onnx").unlink()  # as if the CPU gate had rejected the INT8 ONNX
    manifest = _manifest(copy)
    manifest["artifacts"] = [a for a in manifest["artifacts"] if a["name"] != "onnx-int8"]
    from dermsort.runtime.bundle import decision_digest

    manifest["integrity"] = {"sha256": decision_digest(manifest)}  # as the export would have sealed it
    (copy / "manifest.json").write_text(json.dumps(manifest))
    bundle = engines.export_engines(copy, precisions="fp16,int8", max_batch=16)
    assert built_from == [("model.onnx", "fp16", "input", 64, 16)]  # FP16 engine from the FP32 reference
    engine = bundle.get("tensorrt-fp16")
    bundle.verify(engine)
    assert engine.built_for == facts and engine.path == "tensorrt/model_fp16.engine"
    assert engine.override.startswith("unverified:") and engine.parity["status"] == "unverified"
    assert bundle.extra["engines"]["skipped"]["tensorrt-int8"].startswith("skipped: the bundle has no model.int8.onnx")
    assert bundle.extra["engines"]["timing_cache_sha256"] and (copy / formats.TIMING_CACHE).is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["bundle"]
    rows = {r["name"] for r in json.loads((copy / "export_report.json").read_text())["artifacts"]}
    assert "tensorrt-fp16" in rows


def test_every_export_ships_a_verification_set_or_says_why_not(tiny_checkpoint, fake_train, tmp_path):
    """``dermsort export`` writes verify/ from the smallest labelled (gate) images, so engines built later on a
    Jetson can be verified without labels; the set reproduces with the bundle's own FP32 reference."""
    from dermsort.export import verify_set

    said: list[str] = []
    bundle = api.export_bundle(tiny_checkpoint, tmp_path / "bundle", to="onnx", precisions="fp32", calib=CSVS,
                               calib_count=8, latency_reps=2, say=said.append)
    lines = [s for s in said if "verification set" in s]
    assert len(lines) == 1, said
    if lines[0].startswith("no verification set"):
        # the tiny test model puts few images 1 logit away from its threshold: the export says so and goes on
        assert ("candidate images" in lines[0] or "MB >" in lines[0]) and verify_set.MANIFEST_KEY not in bundle.extra
        return
    vset = verify_set.load(bundle)
    assert vset is not None and len(vset.files) == verify_set.DEFAULT_COUNT
    result = verify_set.check(bundle, [bundle.get("onnx-fp32")], vset)
    assert all(r.passed for r in (result.values() if isinstance(result, dict) else result))


def test_the_exports_verification_set_step_on_a_real_model(tmp_path):
    """The same step on the real default model and the gate's val images: a set is written from the small ones."""
    from dermsort.export import verify_set
    from dermsort.runtime.bundle import DEFAULT_BUNDLE

    copy = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, copy)
    (copy / "signature.json").unlink(missing_ok=True)  # rebuilt locally: unsigned
    shutil.rmtree(copy / "verify")
    every_csv = sorted(str(p) for p in DATA.glob("*/labels.csv"))  # the gate set of the default model's export
    gate = [r.path for r in calibration.gate_set(every_csv, [], "val")[0]]
    said: list[str] = []
    api._verification_set(copy, gate, said.append)
    assert said and said[-1].startswith("verification set: 24 images"), said
    bundle = load_bundle(copy)[0]
    vset = verify_set.load(bundle)
    assert vset is not None and len(vset.files) == 24
    assert sum((copy / f).stat().st_size for f in bundle.extra[verify_set.MANIFEST_KEY]["files"]) < 1.2e6
    assert verify_set.check(bundle, [bundle.get("onnx-fp16")], vset)
