"""Runtime: preprocessing, metadata, bundles, real backends, auto selection."""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import labelled
from dermsort.runtime import engine
from dermsort.runtime.backends.base import backend_status, create_backend, list_backends
from dermsort.runtime.bundle import load_bundle
from dermsort.runtime.errors import BackendUnavailable, DermsortError, ModelError
from dermsort.runtime.metadata import ModelMetadata, PreprocessSpec
from dermsort.runtime.preprocess import UnreadableImage, open_image, preprocess, preprocess_file

SPEC = PreprocessSpec()


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


def test_preprocess_real_image_shape_and_normalisation():
    row = labelled("ham10000-sample", "test", 1)[0]
    tensor, info = preprocess_file(row["path"], SPEC)
    assert tensor.shape == (3, 224, 224) and tensor.dtype == np.float32
    assert info.format == "JPEG" and info.concerns == []
    # ImageNet normalisation of 8-bit pixels stays within these bounds
    assert -2.2 < tensor.min() < tensor.max() < 2.7


@pytest.mark.parametrize("constancy", ["shades_of_gray", "none"])
def test_preprocess_tensor_is_exactly_the_written_formula(constancy):
    """The tensor the runtime computes (per-channel planes, in place, for speed) is bit for bit the
    formula stated in the metadata, written plainly on an HxWx3 array: Shades of Gray (p-norm mean
    per channel in float64, gain to grey, clip 0-255), then (x / scale - mean) / std, then CHW."""
    from dermsort.runtime.preprocess import resize_and_crop, to_array

    spec = PreprocessSpec(color_constancy=constancy, color_constancy_power=6.0, mean=[127.0, 120.0, 110.0],
                          std=[128.0, 64.0, 100.0])
    rows = labelled("ham10000-sample", "test", 4) + labelled("isic2020", "test", 4)
    for row in rows:
        img, _ = open_image(Path(row["path"]).read_bytes(), spec, row["path"])
        cropped = resize_and_crop(img, spec)
        arr = np.asarray(cropped, dtype=np.float32)
        if constancy == "shades_of_gray":
            illuminant = np.power(((arr / np.float32(255.0)) ** 6).reshape(-1, 3).mean(axis=0, dtype=np.float64),
                                  1 / 6)
            gain = 1.0 / (illuminant / np.sqrt(np.sum(illuminant ** 2)) * np.sqrt(3.0))
            arr = np.clip(arr * gain.astype(np.float32), 0.0, 255.0)
        expected = ((arr / np.float32(spec.scale) - np.asarray(spec.mean, np.float32))
                    / np.asarray(spec.std, np.float32)).transpose(2, 0, 1)
        got = to_array(cropped, spec)
        # float32 x**6 by repeated multiplication vs np.power may differ in the last bit of the estimate,
        # which moves the gain by ~1e-7: allow that, nothing more
        np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5)
        assert got.flags.c_contiguous and got.shape == (3, spec.input_size, spec.input_size)


def test_jpeg_draft_decodes_fewer_pixels_but_same_picture():
    path = labelled("ph2", "test", 1)[0]["path"]
    data = Path(path).read_bytes()
    drafted, _ = open_image(data, SPEC)
    full = Image.open(io.BytesIO(data)).convert("RGB")
    assert min(drafted.size) >= SPEC.resize_shorter
    assert drafted.size[0] < full.size[0]  # the DCT-domain downscale really happened
    from dermsort.runtime.preprocess import resize_and_crop, to_array
    a = to_array(resize_and_crop(drafted, SPEC), SPEC)
    b = to_array(resize_and_crop(full, SPEC), SPEC)
    assert np.abs(a - b).mean() < 0.05  # same content, tiny resampling difference


def test_exif_orientation_applied():
    img = Image.open(labelled("ham10000-sample", "test", 1)[0]["path"]).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    rotated, _ = open_image(_jpeg(img, exif=exif.tobytes()), PreprocessSpec(resize_shorter=10_000))
    assert rotated.size == (img.height, img.width)


@pytest.mark.parametrize("data,needle", [
    (b"", "empty"),
    (b"this is not an image at all", "not a readable image"),
])
def test_unreadable_inputs_raise_with_reason(data, needle):
    with pytest.raises(UnreadableImage, match=needle):
        preprocess(data, SPEC, "x.jpg")


def test_truncated_jpeg_is_unreadable():
    data = Path(labelled("ph2", "test", 1)[0]["path"]).read_bytes()
    with pytest.raises(UnreadableImage, match="truncated|corrupt"):
        preprocess(data[: len(data) // 3], SPEC, "cut.jpg")


def test_concerns_for_grayscale_tiny_and_wrong_extension():
    img = Image.open(labelled("ham10000-sample", "test", 1)[0]["path"])
    _, info = preprocess(_jpeg(img.convert("L")), SPEC, "gray.jpg")
    assert any("colour mode L" in c for c in info.concerns)
    _, info = preprocess(_jpeg(img.convert("RGB").resize((40, 30))), SPEC, "tiny.jpg")
    assert any("too small" in c for c in info.concerns)
    _, info = preprocess(_jpeg(img.convert("RGB")), SPEC, "photo.png")
    assert any("does not match" in c for c in info.concerns)


def test_metadata_roundtrip_and_validation():
    meta = ModelMetadata(model_id="m", architecture="a", classes=["benign", "malignant"],
                         malignant_classes=["malignant"], threshold=0.2)
    again = ModelMetadata.from_json(meta.to_json())
    assert again == meta and again.malignant_indices() == [1]
    bad = meta.to_dict() | {"schema_version": 99}
    with pytest.raises(ValueError, match="schema_version"):
        ModelMetadata.from_dict(bad)
    with pytest.raises(ValueError, match="not among"):
        ModelMetadata.from_dict(meta.to_dict() | {"malignant_classes": ["mel"]})


def test_onnx_metadata_props_carry_the_schema(tiny_bundle):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tiny_bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    meta = ModelMetadata.from_json(sess.get_modelmeta().custom_metadata_map["dermsort"])
    bundle, _ = load_bundle(tiny_bundle)
    assert meta.model_id == bundle.model_id and meta.preprocess.input_size == 64


def test_bundle_checksum_mismatch_refused(tiny_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    bundle, _ = load_bundle(copy)
    bundle.verify(bundle.get("onnx-fp32"))
    data = bytearray((copy / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="checksum mismatch"):
        bundle.verify(bundle.get("onnx-fp32"))
    with pytest.raises(ModelError, match="checksum mismatch"):
        engine.open_backend(bundle, "onnxruntime")


def test_bundle_errors_are_one_line(tmp_path, tiny_bundle):
    with pytest.raises(ModelError, match="not found"):
        load_bundle(tmp_path / "nope")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(ModelError, match="no manifest.json"):
        load_bundle(tmp_path / "junk.onnx")
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot read"):
        load_bundle(tmp_path)
    bundle, name = load_bundle(tiny_bundle / "openvino" / "model_fp16.xml")
    assert name == "openvino-fp16"


def _batch(n=6):
    rows = labelled("ham10000-sample", "test", n)
    return np.stack([preprocess_file(r["path"], PreprocessSpec(input_size=64, resize_shorter=64))[0] for r in rows])


def test_onnxruntime_and_openvino_agree_on_real_images(tiny_bundle):
    bundle, _ = load_bundle(tiny_bundle)
    batch = _batch()
    with create_backend("onnxruntime", bundle, bundle.get("onnx-fp32")) as ort_b:
        p_ort = ort_b.predict(batch)
    with create_backend("openvino", bundle, bundle.get("openvino-fp16")) as ov_b:
        p_ov = ov_b.predict(batch)
    with create_backend("openvino", bundle, bundle.get("onnx-fp32")) as ov_onnx:
        p_ov_onnx = ov_onnx.predict(batch)
    assert p_ort.shape == (6, 2)
    np.testing.assert_allclose(p_ort.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(p_ov_onnx, p_ort, atol=1e-4)  # same FP32 graph, other engine
    np.testing.assert_allclose(p_ov, p_ort, atol=5e-3)  # FP16 weights
    assert ort_b.describe()["providers"] == ["CPUExecutionProvider"]


def test_every_registered_backend_is_tested_here_or_skips_with_reason():
    # Optimum-style meta-test: a backend added to the registry must be covered.
    covered = {"onnxruntime", "openvino"}
    elsewhere = {"torch": "tests/train/test_train.py", "tensorrt": "test_tensorrt_backend_on_gpu"}
    assert set(list_backends()) <= covered | set(elsewhere)


def test_tensorrt_backend_on_gpu(tiny_bundle):
    ok, why = backend_status("tensorrt")
    if not ok:
        pytest.skip(f"TensorRT cannot run here: {why}")
    bundle, _ = load_bundle(tiny_bundle)
    engines = [a for a in bundle.artifacts if a.backend == "tensorrt"]
    if not engines:
        pytest.skip("no TensorRT engine in the test bundle (build with `dermsort export-engines` on the GPU)")
    with create_backend("tensorrt", bundle, engines[0]) as trt_b:
        p = trt_b.predict(_batch())
    assert np.allclose(p.sum(axis=1), 1.0, atol=1e-3)


def test_unknown_and_unavailable_backends(tiny_bundle):
    bundle, _ = load_bundle(tiny_bundle)
    with pytest.raises(DermsortError, match="unknown backend 'cuda-magic'"):
        engine.open_backend(bundle, "cuda-magic")
    if not backend_status("tensorrt")[0]:
        with pytest.raises(BackendUnavailable, match="no artifact for backend tensorrt|not available"):
            engine.open_backend(bundle, "tensorrt")


def test_auto_probes_once_then_uses_cached_profile(tiny_bundle):
    bundle, _ = load_bundle(tiny_bundle)
    chosen = engine.open_backend(bundle, "auto")
    profile = engine.load_profile()["models"][bundle.model_id]
    assert profile["source"] == "probe"
    first = profile["ranking"][0]
    assert (chosen.spec.name, chosen.artifact.name) == (first["backend"], first["artifact"])
    assert all(r["images_per_s"] > 0 for r in profile["ranking"])
    # a bench-written profile wins over probing, and is never replaced by a probe
    ranking = [{"backend": "openvino", "artifact": "openvino-fp16", "images_per_s": 1.0},
               {"backend": "onnxruntime", "artifact": "onnx-fp32", "images_per_s": 0.5}]
    engine.save_profile(bundle, ranking, source="bench")
    engine.save_profile(bundle, list(reversed(ranking)), source="probe")
    chosen = engine.open_backend(bundle, "auto")
    assert (chosen.spec.name, chosen.artifact.name) == ("openvino", "openvino-fp16")


def test_runtime_never_imports_torch_or_other_parts():
    import subprocess

    code = ("import sys, dermsort.cli, dermsort.runtime.cli, dermsort.runtime.sorter, dermsort.runtime.engine;"
            "bad=[m for m in sys.modules if m=='torch' or m.startswith(('dermsort.train','dermsort.export','dermsort.bench'))];"
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    for path in Path(__file__).resolve().parents[2].joinpath("runtime").rglob("*.py"):
        text = path.read_text()
        for forbidden in ("import torch", "from torch", "dermsort.train", "dermsort.export", "dermsort.bench"):
            assert forbidden not in text, f"{path} mentions {forbidden}"


def test_a_backend_is_one_module_plus_its_entry_point():
    """The CLI's --backend list, the install advice and the source-tree fallback are all read from the registry."""
    from dermsort.runtime.backends import base
    from dermsort.runtime.cli import BACKENDS

    registered = base.list_backends()
    own = {name: target for name, target in registered.items() if target.startswith("dermsort.runtime.backends.")}
    assert BACKENDS == ["auto", *own] and "torch" in registered and "torch" not in BACKENDS
    assert base._package_backends() == own  # what a source tree without installed metadata finds
    for name in registered:
        hint = base.get_backend_class(name).spec.hint
        assert hint.startswith('pip install "dermsort['), (name, hint)
