"""The bundled verification set: engines built on the device are verified without labels.

TensorRT cannot run here (no GPU), so the real artifacts of the default bundle (ONNX Runtime FP16,
OpenVINO FP16/INT8) stand in for engines: they must agree with the FP32 reference's stored decisions;
a deliberately corrupted model must be refused. In the export-engines test the builder is stubbed
(no TensorRT here) and the "engine" file it writes is an ONNX model that a real ONNX Runtime session
runs in TensorRT's place: the predictions that are judged are real.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dermsort.export import engines, formats, parity, verify_set
from dermsort.runtime.bundle import DEFAULT_BUNDLE, load_bundle, sha256_file
from dermsort.runtime.errors import ModelError

MALIGNANT_SIDE_FLIP = 4.0  # logit added to the "nv" class of the corrupted model


@pytest.fixture
def bundle_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, copy)
    # these tests edit the bundle as a local build would: the copy is unsigned (the signature would refuse
    # every edit first; tests/runtime/test_signing.py covers that)
    (copy / "signature.json").unlink(missing_ok=True)
    return copy


def _seal(bundle_dir, manifest):
    """Write an edited manifest as the export would have written it (with a matching integrity record)."""
    from dermsort.runtime.bundle import decision_digest

    manifest["integrity"] = {"sha256": decision_digest(manifest)}
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))


def _corrupt_onnx(src: Path, dest: Path, classes: list[str]) -> None:
    """A loadable model with wrong weights: the classifier's bias favours the benign class 'nv'."""
    onnx = pytest.importorskip("onnx", reason='needs onnx to write a corrupted model: pip install "dermsort[export]"')
    from onnx import numpy_helper

    model = onnx.load(str(src))
    inits = {init.name: init for init in model.graph.initializer}
    gemm = [n for n in model.graph.node if n.op_type == "Gemm" and len(n.input) == 3 and n.input[2] in inits][-1]
    bias_init = inits[gemm.input[2]]
    bias = numpy_helper.to_array(bias_init).copy()
    assert bias.shape == (len(classes),)
    bias[classes.index("nv")] += MALIGNANT_SIDE_FLIP
    bias_init.CopyFrom(numpy_helper.from_array(bias.astype(bias.dtype), bias_init.name))
    onnx.save(model, str(dest))


def _register(bundle_dir: Path, name: str) -> None:
    """Record a replaced artifact's new checksum, as a build that wrote a wrong model would."""
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    for art in manifest["artifacts"]:
        if art["name"] == name:
            art["sha256"] = sha256_file(bundle_dir / art["path"])
    _seal(bundle_dir, manifest)


def test_default_bundle_ships_a_small_set_on_both_sides_of_the_threshold() -> None:
    bundle, _ = load_bundle(DEFAULT_BUNDLE)
    vset = verify_set.load(bundle)
    assert vset is not None and len(vset.files) >= 16
    assert 0 < vset.review.sum() < len(vset.files)  # both decisions are represented
    reference = bundle.get(formats.REFERENCE)
    assert vset.reference == reference.name and vset.reference_sha256 == reference.sha256
    assert vset.threshold == reference.threshold
    assert np.array_equal(vset.review, vset.p_reference >= vset.threshold)
    distance = np.abs(verify_set._logit(vset.p_reference) - verify_set._logit(vset.threshold))
    assert distance.min() >= vset.margin >= 1.0
    size = sum((bundle.root / rel).stat().st_size for rel in bundle.extra[verify_set.MANIFEST_KEY]["files"])
    assert size < 1_000_000


def test_derived_artifacts_of_the_default_bundle_agree_with_the_reference() -> None:
    """Real ORT and OpenVINO sessions on the default bundle's derived artifacts (v3: FP16 and BF16; its INT8
    artifacts were rejected by the parity gate) pass."""
    bundle, _ = load_bundle(DEFAULT_BUNDLE)
    names = [a.name for a in bundle.artifacts if a.name != formats.REFERENCE]
    assert "onnx-fp16" in names and any(bundle.get(n).backend == "openvino" for n in names)
    said: list[str] = []
    results = verify_set.check(bundle, [bundle.get(n) for n in names], say=said.append)
    for name in names:
        result = results[name]
        assert result.passed and result.flips == 0 and result.n_images == 24, result.message
        assert 0 < result.max_abs_diff <= verify_set.ATOL[bundle.get(name).precision]
    assert "reproduces the verification set" in said[0]


def test_a_corrupted_model_is_refused(bundle_copy: Path) -> None:
    bundle, _ = load_bundle(bundle_copy)
    art = bundle.get("onnx-fp16")
    _corrupt_onnx(bundle_copy / art.path, bundle_copy / art.path, bundle.metadata.classes)
    _register(bundle_copy, art.name)
    bundle, _ = load_bundle(bundle_copy)
    result = verify_set.check(bundle, [bundle.get("onnx-fp16")])["onnx-fp16"]
    assert result.status == "failed" and not result.passed
    # the bias pushes towards benign: images the reference sends to review come back benign
    assert result.flips_to_benign > 0 and result.flips_to_review == 0 and not result.checks["flips"]
    assert "REJECTED" in result.message


def test_a_probability_shift_that_keeps_every_decision_is_still_refused() -> None:
    bundle, _ = load_bundle(DEFAULT_BUNDLE)
    vset = verify_set.load(bundle)
    shifted = np.clip(vset.p_reference + np.where(vset.review, 0.5, 0.0), 0, 1)  # decisions unchanged
    result = verify_set.agreement("x", shifted, vset.threshold, vset, atol=verify_set.ATOL["int8"])
    assert result.flips == 0 and result.status == "failed" and result.checks == {"flips": True, "max_abs_diff": False}
    nan = verify_set.agreement("x", np.full(len(vset.files), np.nan), vset.threshold, vset, atol=1.0)
    assert nan.status == "failed"  # a NaN output decides nothing: refused, never benign


def test_a_tampered_set_is_refused(bundle_copy: Path) -> None:
    rel = sorted(json.loads((bundle_copy / "manifest.json").read_text())["verification_set"]["files"])[0]
    data = bytearray((bundle_copy / rel).read_bytes())
    data[-10] ^= 0xFF
    (bundle_copy / rel).write_bytes(bytes(data))
    with pytest.raises(ModelError, match="checksum mismatch.*verification set"):
        verify_set.load(load_bundle(bundle_copy)[0])


def test_a_reference_that_does_not_reproduce_the_stored_decisions_stops_verification(bundle_copy: Path) -> None:
    path = bundle_copy / verify_set.REFERENCE_JSON
    data = json.loads(path.read_text())
    data["images"][0]["p_malignant"] += 0.01  # as if this machine's decoder or runtime differed
    path.write_text(json.dumps(data))
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["verification_set"]["files"][verify_set.REFERENCE_JSON] = sha256_file(path)
    _seal(bundle_copy, manifest)
    bundle, _ = load_bundle(bundle_copy)
    with pytest.raises(ModelError, match="does not reproduce the bundle's verification set"):
        verify_set.check(bundle, [bundle.get("onnx-fp16")])


# ------------------------------------------------------------------ export-engines without labels

def _tensorrt_here_as_onnxruntime(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, engine_from: dict) -> None:
    """No TensorRT here: the builder is stubbed and writes ONNX bytes as the 'engine'; a real ONNX
    Runtime session runs that file wherever the TensorRT backend would."""
    from dermsort.export import tensorrt_export

    def build(onnx_path, engine_path, precision, input_name, input_size, timing_cache, max_batch=32):
        engine_path.write_bytes(engine_from[precision](onnx_path))
        return {"source": onnx_path.name, "stand_in": "ONNX bytes, run by onnxruntime"}

    monkeypatch.setattr(tensorrt_export, "tensorrt_status", lambda: (True, "stand-in"))
    monkeypatch.setattr(tensorrt_export, "device_info",
                        lambda: {"gpu": "none (onnxruntime stands in)", "compute_capability": "-", "tensorrt": "-"})
    monkeypatch.setattr(tensorrt_export, "build_engine", build)
    monkeypatch.setattr(tensorrt_export, "weakly_typed_flags_available", lambda: True)
    real_create = parity.create_backend

    def create(name, bundle, artifact, **kw):
        if name != "tensorrt":
            return real_create(name, bundle, artifact, **kw)
        as_onnx = tmp_path / f"{artifact.name}.onnx"
        # a real engine carries no embedded metadata (the backend then checks the manifest only): strip the
        # ONNX source's per-artifact records, which name the ONNX artifacts, not this engine
        import onnx

        from dermsort.runtime.metadata import ARTIFACT_RECORD_KEY

        model = onnx.load(str(bundle.root / artifact.path))
        keep = [(p.key, p.value) for p in model.metadata_props if p.key != ARTIFACT_RECORD_KEY]
        del model.metadata_props[:]
        for key, value in keep:
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(model, str(as_onnx))
        # its own sha256: the ONNX Runtime optimised-model cache is keyed by it (not the ONNX source's entry)
        return real_create("onnxruntime", bundle, dataclasses.replace(artifact, backend="onnxruntime",
                                                                      path=str(as_onnx), sha256=sha256_file(as_onnx)),
                           **kw)

    monkeypatch.setattr(parity, "create_backend", create)


def test_export_engines_verifies_engines_without_labels_and_refuses_a_bad_one(bundle_copy: Path, tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from dermsort.export.cli import export_engines as engines_cli

    classes = load_bundle(bundle_copy)[0].metadata.classes
    bad = tmp_path / "bad.onnx"
    _corrupt_onnx(bundle_copy / "model.onnx", bad, classes)
    # model.int8.onnx is not in the default bundle: give the INT8 "engine" a source to build from
    shutil.copyfile(bundle_copy / "model.onnx", bundle_copy / "model.int8.onnx")
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["artifacts"].append({**next(a for a in manifest["artifacts"] if a["name"] == "onnx-fp32"),
                                  "name": "onnx-int8", "path": "model.int8.onnx", "precision": "int8"})
    _seal(bundle_copy, manifest)
    _tensorrt_here_as_onnxruntime(monkeypatch, tmp_path, {"fp16": lambda src: src.read_bytes(),
                                                          "int8": lambda src: bad.read_bytes()})
    result = CliRunner().invoke(engines_cli, [str(bundle_copy), "--precision", "fp16,int8"])
    assert result.exit_code == 3, result.output  # a requested engine is not in the bundle
    assert "tensorrt-int8" in result.output
    bundle, _ = load_bundle(bundle_copy)
    fp16 = bundle.get("tensorrt-fp16")
    bundle.verify(fp16)
    assert fp16.accepted and not fp16.override and fp16.parity["status"] == "passed"
    assert fp16.parity["flips"] == 0 and fp16.parity["n_images"] == 24
    assert "tensorrt-int8" not in [a.name for a in bundle.artifacts]
    assert not (bundle_copy / formats.target("tensorrt-int8").path).exists()
    rejected = bundle.extra["engines"]["rejected"]
    assert [r["name"] for r in rejected] == ["tensorrt-int8"] and "REJECTED" in rejected[0]["reason"]
    gate = bundle.extra["engines"]["parity"]
    assert gate["ran"] and gate["kind"] == "verification set (no labels)" and gate["n_images"] == 24


def test_export_engines_without_labels_or_set_leaves_engines_unverified(bundle_copy: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    del manifest[verify_set.MANIFEST_KEY]
    _seal(bundle_copy, manifest)
    _tensorrt_here_as_onnxruntime(monkeypatch, tmp_path, {"fp16": lambda src: src.read_bytes()})
    bundle = engines.export_engines(bundle_copy, precisions="fp16")
    engine = bundle.get("tensorrt-fp16")
    assert not engine.accepted and engine.parity["status"] == "unverified"
    assert "no verification set" in engine.override


def test_export_engines_verifies_on_the_users_own_images(bundle_copy: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """--verify-images: the reference's decisions are made here on the user's images (no labels)."""
    from conftest import DATA

    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    del manifest[verify_set.MANIFEST_KEY]
    _seal(bundle_copy, manifest)
    _tensorrt_here_as_onnxruntime(monkeypatch, tmp_path, {"fp16": lambda src: src.read_bytes()})
    bundle = engines.export_engines(bundle_copy, precisions="fp16",
                                    verify_images=[DATA / "ph2" / "images"])
    engine = bundle.get("tensorrt-fp16")
    assert engine.accepted and engine.parity["status"] == "passed" and engine.parity["n_images"] == 24
    gate = bundle.extra["engines"]["parity"]
    assert gate["kind"] == "verification images given here (no labels)" and gate["n_images"] == 24
