"""The parity gate's clinical rules on hand-built score arrays, the gate set and calibration mix on the real
labels.csv files (listing only, nothing decoded), the CLI tolerances, the TensorRT graph check on hand-made
graphs and the engine/device check -- all without a model export (fast; no torch needed)."""

from __future__ import annotations

import csv
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from dermsort.export import calibration, parity
from dermsort.export.parity import Tolerances, compare, malignant_to_benign_allowed

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
ALL_CSVS = sorted(str(p) for p in DATA.glob("*/labels.csv"))

N_MAL, N_BEN, THRESHOLD = 100, 900, 0.5


def _reference(caught: int, benign_review: int = 90, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Reference scores with a tight threshold at 0.5: caught malignant in [0.52, 0.95], benign in review in
    [0.6, 0.95] (so recalibration cannot trade them), everything sent to benign in [0, 0.45]."""
    rng = np.random.default_rng(seed)
    p = np.empty(N_MAL + N_BEN)
    p[:caught] = rng.uniform(0.52, 0.95, caught)
    p[caught:N_MAL] = rng.uniform(0.05, 0.45, N_MAL - caught)
    p[N_MAL:N_MAL + benign_review] = rng.uniform(0.6, 0.95, benign_review)
    p[N_MAL + benign_review:] = rng.uniform(0.0, 0.45, N_BEN - benign_review)
    malignant = np.r_[np.ones(N_MAL, int), np.zeros(N_BEN, int)]
    return p, malignant


BENIGN_IN_BENIGN = slice(N_MAL + 90, N_BEN + N_MAL)  # reference: benign images sent to benign
BENIGN_IN_REVIEW = slice(N_MAL, N_MAL + 90)          # reference: benign images sent to review


def test_defaults_are_explicit_and_the_rule_arithmetic():
    assert asdict(Tolerances()) == {"max_sensitivity_drop": 0.01, "max_flip_rate": 0.02, "max_specificity_drop": 0.02}
    assert parity.DEFAULT_TARGET_SENSITIVITY == 0.95
    # floor((sens_ref - target) * n_malignant), never below zero, exact at the boundary
    assert malignant_to_benign_allowed(19, 20, 0.95) == 0   # 0.95 exactly: no margin
    assert malignant_to_benign_allowed(20, 20, 0.95) == 1   # 1.00 on 20: one image of margin
    assert malignant_to_benign_allowed(97, 100, 0.95) == 2
    assert malignant_to_benign_allowed(25, 26, 0.95) == 0   # 96.2 % on 26: 0.3 of an image
    assert malignant_to_benign_allowed(80, 100, 0.95) == 0  # below target: nothing may go


def test_i_benign_flipped_to_review_beyond_the_specificity_bound_is_rejected_for_specificity():
    p_ref, malignant = _reference(caught=97)
    p_art = p_ref.copy()
    rng = np.random.default_rng(1)
    idx = np.arange(N_BEN + N_MAL)[BENIGN_IN_BENIGN][:19]
    p_art[idx] = rng.uniform(0.6, 0.9, len(idx))  # 19 of 900 benign now in review: 2.1 pp of specificity
    result = compare("benign-to-review", p_art, p_ref, malignant, THRESHOLD)
    assert result.flips_to_review == result.benign_to_review == 19 and result.flips_to_benign == 0
    assert result.malignant_to_benign == 0 and result.sensitivity == result.sensitivity_reference
    assert result.specificity_drop == pytest.approx(19 / 900)
    assert result.flip_rate == pytest.approx(0.019)  # within the 2 % flip bound...
    assert result.checks == {"sensitivity_drop": True, "malignant_to_benign": True, "specificity_drop": False,
                             "flip_rate": True}
    assert result.status == "failed" and "specificity" in result.message  # ...rejected for specificity alone
    assert "19 to review (19 benign)" in result.message


def test_ii_a_malignant_image_sent_to_benign_without_margin_is_rejected_for_safety():
    p_ref, malignant = _reference(caught=95)  # sensitivity 95.0 % = the target: no margin
    p_art = p_ref.copy()
    p_art[0], p_art[95] = 0.3, 0.8  # a caught malignant image goes to benign, a missed one comes to review
    result = compare("swap", p_art, p_ref, malignant, THRESHOLD, target_sensitivity=0.95)
    # the totals do not move: same sensitivity, same specificity, 2 flips of 1000 (0.2 %)
    assert result.sensitivity == result.sensitivity_reference == 0.95
    assert result.specificity_drop == 0 and result.flips == 2 and result.flip_rate <= Tolerances().max_flip_rate
    assert result.flips_to_benign == result.malignant_to_benign == 1 and result.flips_to_review == 1
    assert result.benign_to_review == 0 and result.malignant_to_benign_allowed == 0
    assert result.checks["malignant_to_benign"] is False and result.status == "failed"
    assert "safety: 1 malignant image(s)" in result.message and "0 allowed" in result.message


def test_iii_flips_within_every_bound_pass_and_are_counted_by_direction():
    p_ref, malignant = _reference(caught=97)  # 97 % vs target 95 %: floor(0.02 * 100) = 2 may go
    p_art = p_ref.copy()
    p_art[0], p_art[97] = 0.3, 0.8  # one malignant swap (allowed by the margin)
    benign_in_benign = np.arange(N_BEN + N_MAL)[BENIGN_IN_BENIGN]
    benign_in_review = np.arange(N_BEN + N_MAL)[BENIGN_IN_REVIEW]
    p_art[benign_in_benign[:5]] = 0.7   # 5 benign to review
    p_art[benign_in_review[:3]] = 0.2   # 3 benign from review to benign
    result = compare("ok", p_art, p_ref, malignant, THRESHOLD, target_sensitivity=0.95)
    assert result.passed, result.message
    assert (result.flips_to_benign, result.flips_to_review) == (4, 6)
    assert (result.malignant_to_benign, result.benign_to_review) == (1, 5)
    assert result.malignant_to_benign_allowed == 2 and result.flips == 10
    assert result.specificity_drop == pytest.approx(2 / 900) and result.sensitivity_drop == 0
    assert all(result.checks.values()) and result.tolerances == asdict(Tolerances())
    d = result.to_dict()  # what lands in the manifest: every number of every rule
    for key in ("flips_to_benign", "flips_to_review", "malignant_to_benign", "benign_to_review",
                "malignant_to_benign_allowed", "target_sensitivity", "sensitivity_margin_reference",
                "specificity_drop", "sensitivity_drop", "flip_rate", "tolerances", "checks"):
        assert d[key] is not None, key
    assert d["sensitivity_margin_reference"] == pytest.approx(0.02)


def test_iv_a_systematic_int8_offset_passes_after_recalibration_with_zero_flips():
    p_ref, malignant = _reference(caught=97)
    logit = np.log(p_ref.clip(1e-6, 1 - 1e-6) / (1 - p_ref.clip(1e-6, 1 - 1e-6)))
    p_art = 1 / (1 + np.exp(-(logit - 0.4)))  # the malignant logit lowered by 0.4, as the INT8 backbone does
    result = compare("offset", p_art, p_ref, malignant, THRESHOLD)
    assert result.passed and result.flips == 0 and result.threshold < THRESHOLD
    assert result.specificity == result.specificity_reference and result.sensitivity == result.sensitivity_reference
    # without recalibration the same offset sends malignant images to benign: the unsafe direction
    assert result.flips_at_reference_threshold > 0
    assert result.sensitivity_at_reference_threshold < result.sensitivity_reference
    fixed = compare("offset-fixed", p_art, p_ref, malignant, THRESHOLD, recalibrate=False)
    assert not fixed.passed and not fixed.checks["sensitivity_drop"] and not fixed.checks["malignant_to_benign"]
    assert fixed.malignant_to_benign > 2


def test_churn_in_both_directions_is_caught_by_the_flip_bound():
    """Benign images swapped in both directions: specificity unchanged, decisions for 30 people changed."""
    p_ref, malignant = _reference(caught=97)
    p_art = p_ref.copy()
    idx_b = np.arange(N_BEN + N_MAL)[BENIGN_IN_BENIGN][:15]
    idx_r = np.arange(N_BEN + N_MAL)[BENIGN_IN_REVIEW][:15]
    p_art[idx_b], p_art[idx_r] = 0.7, 0.2
    result = compare("churn", p_art, p_ref, malignant, THRESHOLD)
    assert result.specificity_drop == 0 and result.malignant_to_benign == 0
    assert (result.flips_to_benign, result.flips_to_review, result.flips) == (15, 15, 30)
    assert result.checks["flip_rate"] is False and result.status == "failed" and "decision flips" in result.message


# --------------------------------------------------------------------------- gate set and calibration mix

def _rows(path: str, split: str | None = None) -> list[dict]:
    with open(path, newline="") as fh:
        return [r for r in csv.DictReader(fh) if split is None or r.get("split") == split]


def test_gate_set_is_the_val_split_of_every_labels_csv_with_counts_per_data_set():
    assert len(ALL_CSVS) >= 3
    rows, csvs = calibration.gate_set(ALL_CSVS, [])
    assert csvs == ALL_CSVS
    per = calibration.per_dataset(rows)
    for path in ALL_CSVS:
        val = _rows(path, "val")
        name = Path(path).parent.name
        assert per[name] == {"n_images": len(val), "n_malignant": sum(int(r["malignant"]) for r in val)}
    assert sum(v["n_images"] for v in per.values()) == len(rows)
    assert all(r.split == "val" for r in rows)
    # default: the val rows of every --calib CSV (folders carry no labels); a CSV given twice counts once
    folder = str(DATA / "isic2020-unlabelled")
    default, used = calibration.gate_set([], [*ALL_CSVS, folder, ALL_CSVS[0]])
    assert [r.path for r in default] == [r.path for r in rows] and folder not in used


def test_calibration_draws_an_even_mix_of_train_images_and_never_gate_val_or_test():
    gate, _ = calibration.gate_set([], ALL_CSVS)
    held_out = {(Path(p).parent / r["file"]).resolve() for p in ALL_CSVS for r in _rows(p) if r["split"] != "train"}
    train = {(Path(p).parent / r["file"]).resolve(): Path(p).parent.name for p in ALL_CSVS for r in _rows(p, "train")}
    n = 10 * len(ALL_CSVS)
    files = calibration.calibration_files(ALL_CSVS, n, exclude=[r.path for r in gate])
    assert len(files) == len(set(files)) == n
    assert not set(files) & held_out and set(files) <= set(train)
    mix = calibration.mix(files, ALL_CSVS)
    assert mix == {Path(p).parent.name: 10 for p in ALL_CSVS}  # stratified: an equal share per data set
    # a large request: small sets give all their train images, the big ones fill the rest
    sizes = {Path(p).parent.name: len(_rows(p, "train")) for p in ALL_CSVS}
    smallest = min(sizes, key=sizes.get)
    big = calibration.calibration_files(ALL_CSVS, sizes[smallest] * len(ALL_CSVS) + 50)
    big_mix = calibration.mix(big, ALL_CSVS)
    assert big_mix[smallest] == sizes[smallest] and sum(big_mix.values()) == len(big)
    assert not set(big) & held_out
    # deterministic for a seed, different for another
    assert calibration.calibration_files(ALL_CSVS, 30) == calibration.calibration_files(ALL_CSVS, 30)
    assert calibration.calibration_files(ALL_CSVS, 30, seed=1) != calibration.calibration_files(ALL_CSVS, 30)


def test_a_folder_source_cannot_smuggle_val_or_test_images_into_calibration():
    sample = DATA / "ham10000-sample"
    folder_files = calibration.calibration_files([sample / "images"], 10_000)
    non_train = {(sample / r["file"]).resolve() for r in _rows(str(sample / "labels.csv")) if r["split"] != "train"}
    assert non_train <= set(folder_files)  # a folder alone knows no splits...
    both = calibration.calibration_files([sample / "labels.csv", sample / "images"], 10_000)
    assert not set(both) & non_train  # ...given the labels.csv too, its val/test rows are left out
    assert calibration.mix(both, [sample / "labels.csv", sample / "images"]) == {
        "ham10000-sample": len(both)}  # the CSV's folder holds the images folder: counted as that set


# --------------------------------------------------------------------------- CLI tolerances

class _Stop(Exception):
    pass


def test_cli_tolerance_options_land_in_tolerances(tmp_path, monkeypatch):
    pytest.importorskip("click")
    from click.testing import CliRunner

    from dermsort.export import api, engines
    from dermsort.export.cli import export, export_engines

    seen = {}

    def capture(*args, **kwargs):
        seen.update(kwargs)
        raise _Stop

    monkeypatch.setattr(api, "export_bundle", capture)
    monkeypatch.setattr(engines, "export_engines", capture)
    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(b"x")
    result = CliRunner().invoke(export, [str(ckpt), "--out", str(tmp_path / "b"), "--calib", ALL_CSVS[0],
                                         "--max-sensitivity-drop", "0.005", "--max-specificity-drop", "0.03",
                                         "--max-flip-rate", "0.015"])
    assert isinstance(result.exception, _Stop), result.output
    assert seen["tolerances"] == Tolerances(max_sensitivity_drop=0.005, max_flip_rate=0.015, max_specificity_drop=0.03)
    seen.clear()
    CliRunner().invoke(export, [str(ckpt), "--out", str(tmp_path / "b"), "--calib", ALL_CSVS[0]])
    assert seen["tolerances"] == Tolerances()
    seen.clear()
    (tmp_path / "bundle").mkdir()
    result = CliRunner().invoke(export_engines, [str(tmp_path / "bundle"), "--max-specificity-drop", "0.05"])
    assert isinstance(result.exception, _Stop) and seen["tolerances"] == Tolerances(max_specificity_drop=0.05)
    help_text = CliRunner().invoke(export, ["--help"]).output
    for option in ("--max-sensitivity-drop", "--max-specificity-drop", "--max-flip-rate"):
        assert option in help_text


# --------------------------------------------------------------------------- TensorRT graph check

def _qdq_graph(zero_point=np.int8(0), bias_int32: bool = False, opset: int = 17, extra_op: str | None = None,
               domain: str = ""):
    """x -> Q -> DQ -> Conv(W: int8 DQ per-channel, B) -> y: the shape of ONNX Runtime's QDQ output."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    inits = [
        numpy_helper.from_array(np.array(0.02, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(zero_point), "x_zp"),
        numpy_helper.from_array(np.ones((4, 3, 3, 3), np.int8), "w_q"),
        numpy_helper.from_array(np.full(4, 0.01, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(4, np.int8), "w_zp"),
    ]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"], name="q_x"),
             helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"], name="dq_x"),
             helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="dq_w", axis=0)]
    if bias_int32:
        inits += [numpy_helper.from_array(np.zeros(4, np.int32), "b_q"),
                  numpy_helper.from_array(np.full(4, 0.0002, np.float32), "b_scale"),
                  numpy_helper.from_array(np.zeros(4, np.int32), "b_zp")]
        nodes.append(helper.make_node("DequantizeLinear", ["b_q", "b_scale", "b_zp"], ["b"], name="dq_b", axis=0))
    else:
        inits.append(numpy_helper.from_array(np.zeros(4, np.float32), "b"))
    nodes.append(helper.make_node("Conv", ["x_dq", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1]))
    out = "y"
    if extra_op:
        nodes.append(helper.make_node(extra_op, ["y"], ["z"], name="extra", domain=domain))
        out = "z"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], inits)
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets)


def test_trt_check_passes_a_clean_symmetric_qdq_graph_and_names_each_problem():
    from dermsort.export.trt_compat import check, trt_compatibility_problems

    assert trt_compatibility_problems(_qdq_graph()) == []
    assert check(_qdq_graph())["passed"] is True
    problems = trt_compatibility_problems(_qdq_graph(bias_int32=True))
    assert len(problems) == 1 and "INT32" in problems[0] and "QuantizeBias=False" in problems[0]
    assert any("not 0" in p for p in trt_compatibility_problems(_qdq_graph(zero_point=np.int8(3))))
    assert any("not int8" in p for p in trt_compatibility_problems(_qdq_graph(zero_point=np.uint8(128))))
    assert any("opset 11" in p for p in trt_compatibility_problems(_qdq_graph(opset=11)))
    assert any("opset 21" in p for p in trt_compatibility_problems(_qdq_graph(opset=21)))
    assert any("NonZero" in p for p in trt_compatibility_problems(_qdq_graph(extra_op="NonZero")))
    assert any("com.microsoft.Gelu" in p
               for p in trt_compatibility_problems(_qdq_graph(extra_op="Gelu", domain="com.microsoft")))


# --------------------------------------------------------------------------- engine vs device

def test_engine_built_for_another_gpu_or_tensorrt_is_refused_before_loading():
    from dermsort.runtime.backends.trt import built_for_mismatch

    built = {"gpu": "Orin (nvgpu)", "compute_capability": "8.7", "tensorrt": "10.3.0"}
    assert built_for_mismatch(built, dict(built)) == ""
    assert built_for_mismatch(built, {**built, "gpu": " orin  (NVGPU)\x00"}) == ""  # spelling noise is not a change
    other_gpu = built_for_mismatch(built, {**built, "gpu": "NVIDIA H200", "compute_capability": "9.0"})
    assert "GPU Orin (nvgpu) (this device: NVIDIA H200)" in other_gpu and "compute capability 8.7" in other_gpu
    same_arch = built_for_mismatch(built, {**built, "gpu": "Jetson AGX Orin"})  # same SM, another GPU model
    assert "GPU" in same_arch and "compute capability" not in same_arch
    assert "TensorRT 10.3.0 (this device: 10.7.0)" in built_for_mismatch(built, {**built, "tensorrt": "10.7.0"})
    assert built_for_mismatch({"tensorrt": "10.3.0"}, {**built, "gpu": "anything"}) == ""  # older manifests


def test_runtime_trt_module_stays_free_of_torch_and_train():
    import subprocess
    import sys

    code = ("import sys, dermsort.runtime.backends.trt; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('dermsort.train')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
