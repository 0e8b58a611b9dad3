"""Compiled/optimised-model caches (issue 15): reused across runs, keyed right, never change a decision.

Real sessions on the bundled default model (the model `dermsort sort` runs) and real images.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import labelled

from dermsort.runtime.backends.base import create_backend
from dermsort.runtime.bundle import DEFAULT_BUNDLE, load_bundle
from dermsort.runtime.engine import compiled_cache_dir
from dermsort.runtime.preprocess import preprocess_file


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(DEFAULT_BUNDLE)[0]


@pytest.fixture(scope="module")
def batch(bundle):
    rows = labelled("ham10000-sample", "test", 3) + labelled("ph2", "test", 3)
    return np.stack([preprocess_file(r["path"], bundle.metadata.preprocess)[0] for r in rows])


def _run(bundle, backend: str, artifact: str, batch: np.ndarray) -> tuple[np.ndarray, dict]:
    with create_backend(backend, bundle, bundle.get(artifact)) as b:
        return b.predict(batch), b.describe()


def _uncached(bundle, backend, artifact, batch, monkeypatch):
    with monkeypatch.context() as m:
        m.setenv("DERMSORT_COMPILED_CACHE", "0")
        out, info = _run(bundle, backend, artifact, batch)
    assert info.get("graph_cache", "off") == "off" and info.get("compiled_cache", "off") == "off"
    return out


def test_ort_optimised_graph_cached_once_and_outputs_identical(bundle, batch, monkeypatch):
    import onnxruntime as ort

    reference = _uncached(bundle, "onnxruntime", "onnx-fp32", batch, monkeypatch)
    folder = compiled_cache_dir("onnxruntime")
    assert not list(folder.iterdir())  # nothing written while disabled
    first, info1 = _run(bundle, "onnxruntime", "onnx-fp32", batch)
    files = sorted(p.name for p in folder.iterdir())
    second, info2 = _run(bundle, "onnxruntime", "onnx-fp32", batch)
    assert (info1["graph_cache"], info2["graph_cache"]) == ("written", "hit")
    sha = bundle.get("onnx-fp32").sha256
    assert len(files) == 2 and files[0].startswith(sha[:20]) and f"-ort{ort.__version__}-" in files[0]
    assert files[1] == files[0] + ".sha256"
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    # bit-identical, not merely close: the cache must never move a p_malignant across the threshold
    assert np.array_equal(first, reference) and np.array_equal(second, reference)


def test_ort_cache_keyed_by_model_sha_and_library_version(bundle, batch, monkeypatch):
    import onnxruntime as ort

    _run(bundle, "onnxruntime", "onnx-fp32", batch)
    _run(bundle, "onnxruntime", "onnx-fp16", batch)  # another model: its own entry
    monkeypatch.setattr(ort, "__version__", "0.0.0-other")
    _, info = _run(bundle, "onnxruntime", "onnx-fp32", batch)  # another ORT: the old graph is not reused
    assert info["graph_cache"] == "written"
    names = sorted(p.name for p in compiled_cache_dir("onnxruntime").glob("*.onnx"))
    assert len(names) == 3
    assert {n[:20] for n in names} == {bundle.get("onnx-fp32").sha256[:20], bundle.get("onnx-fp16").sha256[:20]}


def test_corrupt_ort_cache_is_rebuilt_not_run(bundle, batch, monkeypatch):
    reference = _uncached(bundle, "onnxruntime", "onnx-fp32", batch, monkeypatch)
    _run(bundle, "onnxruntime", "onnx-fp32", batch)
    cached = next(compiled_cache_dir("onnxruntime").glob("*.onnx"))
    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped bit in the weights would still parse and run
    cached.write_bytes(bytes(data))
    out, info = _run(bundle, "onnxruntime", "onnx-fp32", batch)
    assert info["graph_cache"] == "written" and np.array_equal(out, reference)
    _, info = _run(bundle, "onnxruntime", "onnx-fp32", batch)
    assert info["graph_cache"] == "hit"


def test_unwritable_cache_still_sorts(bundle, batch, monkeypatch, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")  # the cache root is a file: nothing can be created under it
    monkeypatch.setenv("DERMSORT_CACHE_DIR", str(blocker))
    out, info = _run(bundle, "onnxruntime", "onnx-fp32", batch)
    assert info["graph_cache"] == "off" and out.shape == (len(batch), len(bundle.metadata.classes))
    out_ov, info_ov = _run(bundle, "openvino", "openvino-fp16", batch)
    assert info_ov["compiled_cache"] == "off" and out_ov.shape == out.shape


def test_openvino_compiled_model_cached_and_outputs_identical(bundle, batch, monkeypatch):
    pytest.importorskip("openvino", reason="openvino extra not installed")
    reference = _uncached(bundle, "openvino", "openvino-fp16", batch, monkeypatch)
    folder = compiled_cache_dir("openvino")
    assert not list(folder.iterdir())
    first, info = _run(bundle, "openvino", "openvino-fp16", batch)
    blobs = list(folder.glob("*.blob"))
    assert info["compiled_cache"] == os.fspath(folder) and len(blobs) == 1
    stamp = blobs[0].stat().st_mtime_ns
    second, _ = _run(bundle, "openvino", "openvino-fp16", batch)
    assert [b.name for b in folder.glob("*.blob")] == [blobs[0].name] and blobs[0].stat().st_mtime_ns == stamp
    assert np.array_equal(first, reference) and np.array_equal(second, reference)
    # (model v3's bundle has one OpenVINO IR, shared by openvino-fp16 and -bf16: no second model to cache here)


def test_cache_lives_under_the_dermsort_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DERMSORT_CACHE_DIR", str(tmp_path / "c"))
    assert compiled_cache_dir("onnxruntime") == tmp_path / "c" / "compiled" / "onnxruntime"
    assert Path(tmp_path / "c" / "compiled" / "onnxruntime").is_dir()
    monkeypatch.setenv("DERMSORT_COMPILED_CACHE", "off")
    assert compiled_cache_dir("openvino") is None


def test_sessions_cached_or_not_run_without_spin_waiting(bundle):
    # sort decodes on the same cores: ORT's spinning threads would steal their CPU (docs/BENCHMARKS.md A/B)
    states = []
    for _ in range(2):  # first run writes the optimised graph, the second loads it: same session options
        with create_backend("onnxruntime", bundle, bundle.get("onnx-fp32"), threads=2) as b:
            opts = b.session.get_session_options()
            assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
            assert opts.intra_op_num_threads == 2
            states.append(b.cache_state)
    assert states == ["written", "hit"]
