"""`dermsort export` as a person runs it, in a subprocess: --json keeps stdout pure JSON (progress
goes to stderr), `--to openvino --precision fp32` writes an OpenVINO FP32 IR, and --calib is needed
only for INT8."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason='export tests need torch: pip install "dermsort[export]"')

from conftest import DATA, labelled  # noqa: E402
from test_export import SPEC, TinyCNN, _save_checkpoint  # noqa: E402

from dermsort.runtime.metadata import ModelMetadata, Validation  # noqa: E402

TESTS = Path(__file__).resolve().parent  # tests/export, where test_export lives
#: the CLI with the test architecture registered (as tests/export/test_export.py does in-process)
LAUNCH = ("import sys; sys.path.insert(0, sys.argv.pop(1)); from test_export import _fake_train_models; "
          "sys.modules['dermsort.train.models'] = _fake_train_models(); "
          "from dermsort.cli import main; sys.exit(main(sys.argv[1:]))")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = TinyCNN(2).eval()
    meta = ModelMetadata(model_id="test-tiny-cli", architecture="test_tiny_cnn", classes=["benign", "malignant"],
                         malignant_classes=["malignant"], threshold=0.5, preprocess=SPEC,
                         validation=Validation(split="none (test model)"))
    return _save_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint.pt", model, "test_tiny_cnn", meta)


def _export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LAUNCH, str(TESTS), "export", *args], capture_output=True,
                          text=True, timeout=600)


def test_export_json_keeps_stdout_valid_json(checkpoint, tmp_path):
    out = tmp_path / "bundle"
    res = _export(str(checkpoint), "--out", str(out), "--to", "onnx,openvino", "--precision", "fp32,int8",
                  "--calib", str(DATA / "ham10000-sample" / "labels.csv"), "--calib-count", "16",
                  "--labelled", str(DATA / "ph2" / "labels.csv"), "--allow-parity-failure", "--json")
    assert res.returncode in (0, 3), res.stderr[-3000:]
    data = json.loads(res.stdout)  # nothing but the JSON on stdout
    assert {a["name"] for a in data["artifacts"]} >= {"onnx-fp32", "openvino-fp32", "openvino-int8", "onnx-int8"}
    assert "exporting openvino-int8" in res.stderr  # the progress went to stderr


def test_openvino_fp32_without_calib_writes_an_fp32_ir(checkpoint, tmp_path):
    from dermsort.runtime.backends.base import create_backend
    from dermsort.runtime.bundle import load_bundle
    from dermsort.runtime.preprocess import preprocess_file

    out = tmp_path / "bundle"
    res = _export(str(checkpoint), "--out", str(out), "--to", "openvino", "--precision", "fp32", "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    names = [a["name"] for a in json.loads(res.stdout)["artifacts"]]
    assert names == ["onnx-fp32", "openvino-fp32"]
    assert "seeded random images" in res.stderr
    bundle, _ = load_bundle(out)
    art = bundle.get("openvino-fp32")
    assert art.backend == "openvino" and art.precision == "fp32" and (out / "openvino" / "model_fp32.bin").is_file()
    import openvino as ov

    weights = [op for op in ov.Core().read_model(str(out / art.path)).get_ops() if op.get_type_name() == "Constant"]
    assert weights and all(str(op.get_element_type()) != "<Type: 'float16'>" for op in weights)
    x = np.stack([preprocess_file(r["path"], SPEC)[0] for r in labelled("ph2", "test", 8)])
    with create_backend("openvino", bundle, art) as ov_b, create_backend("onnxruntime", bundle, bundle.get("onnx-fp32")) \
            as ort_b:
        assert np.abs(ov_b.predict(x) - ort_b.predict(x)).max() < 1e-4


def test_int8_without_calib_is_one_clear_line(checkpoint, tmp_path):
    res = _export(str(checkpoint), "--out", str(tmp_path / "b"), "--to", "openvino", "--precision", "fp16,int8")
    lines = res.stderr.strip().splitlines()
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "--calib is required for INT8" in lines[-1] and "openvino-int8" in lines[-1], res.stderr
    assert not (tmp_path / "b").exists()
