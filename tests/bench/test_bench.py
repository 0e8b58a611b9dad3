"""dermsort bench: real runs on the tiny bundle and real images; the machine profile that `auto` reads."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import DATA
from dermsort.cli import cli
from dermsort.runtime import engine
from dermsort.runtime.bundle import load_bundle

# studies/ (one-off studies behind published figures) is not installed: import it from this checkout
sys.path.append(str(Path(__file__).resolve().parents[2]))

FAST = ["--reps", "5", "--warmup", "1", "--e2e-reps", "1", "--cold-reps", "1"]


def _bench(args: list[str]):
    return CliRunner().invoke(cli, ["bench", *args], catch_exceptions=False)


def test_bench_writes_four_reports_with_sane_values_and_auto_uses_its_profile(tiny_bundle, tmp_path):
    out = tmp_path / "report"
    res = _bench([str(tiny_bundle), "--data", str(DATA / "ham10000-sample"), "--data", str(DATA / "ph2" / "labels.csv"),
                  "--max-images", "8", "--out", str(out), *FAST])
    assert res.exit_code == 0, res.output
    for name in ("report.md", "report.json", "report.csv", "latency_vs_sensitivity.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "latency_vs_sensitivity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    report = json.loads((out / "report.json").read_text())
    assert report["data"]["n_images"] == 8 and 0 < report["data"]["n_malignant"] < 8
    assert report["settings"]["reps"] == 5 and report["settings"]["warmup"] == 1
    machine = report["machine"]
    assert machine["cpu"] and machine["logical_cores"] >= 1 and machine["ram_gb"] > 0
    assert {"numpy", "onnxruntime"} <= set(machine["versions"]) and machine["python"] == sys.version.split()[0]

    rows = [r for r in report["rows"] if r["kind"] == "artifact"]
    pairs = {(r["backend"], r["artifact"]) for r in rows}
    assert {("onnxruntime", "onnx-fp32"), ("openvino", "openvino-fp16"), ("openvino", "onnx-fp32")} <= pairs
    for row in rows:
        assert not row["error"], row["error"]
        assert row["latency_p50_ms"] > 0 and row["latency_p95_ms"] >= row["latency_p50_ms"]
        assert row["best_batch"] in (1, 4, 8, 16, 32) and row["best_batch_images_per_s"] > 0
        assert row["e2e_images_per_s"] > 0 and row["cold_start_s"] > 0 and row["peak_rss_mb"] > 0
        assert row["auc"] is None or 0.0 <= row["auc"] <= 1.0
        low, high = row["sensitivity_ci95"]
        assert 0.0 <= low <= row["sensitivity"] <= high <= 1.0
        assert 0.0 <= row["specificity"] <= 1.0 and 0.0 <= row["work_reduction"] <= 1.0
        assert row["n_images"] == 8 and 0.0 <= row["agreement"] <= 1.0
    ref = next(r for r in rows if r["reference"])
    assert (ref["backend"], ref["artifact"]) == ("onnxruntime", "onnx-fp32")
    assert ref["agreement"] == 1.0 and ref["flips_to_benign"] == ref["flips_to_review"] == 0 and ref["passed"]
    base = next(r for r in report["rows"] if r["kind"] == "baseline")
    assert "naive" in base["label"] and base["e2e_images_per_s"] > 0 and not base["passed"]
    assert all(r["speedup_e2e_vs_naive"] > 0 for r in rows)
    # issue 15: the DermoSort-style pipeline (EfficientNet-B4 @ 256, torch eager) timed in the same run
    ds = report["dermosort_style"]
    assert "EfficientNet-B4" in ds["label"] and len(ds["e2e_seconds"]) == 1 and ds["e2e_images_per_s"] > 0
    assert all(r["speedup_e2e_vs_dermosort"] == pytest.approx(r["e2e_images_per_s"] / ds["e2e_images_per_s"])
               for r in rows)
    assert "vs DermoSort-style" in (out / "report.md").read_text()

    with open(out / "report.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == len(report["rows"]) and float(table[0]["latency_p50_ms"]) > 0
    text = (out / "report.md").read_text()
    assert machine["cpu"] in text and "warm-up" in text and "naive baseline" in text

    # the bench-written profile: fastest first by end-to-end throughput, passed artifacts only
    ranking = report["profile"]["ranking"]
    assert [e["images_per_s"] for e in ranking] == sorted((e["images_per_s"] for e in ranking), reverse=True)
    # each artifact on the backend its gate ran it on: what auto may run (not e.g. openvino running onnx-fp32)
    bundle, _ = load_bundle(tiny_bundle)
    gate = {a.name: a.backend for a in bundle.artifacts}
    assert {(e["backend"], e["artifact"]) for e in ranking} == {
        (r["backend"], r["artifact"]) for r in rows if r["passed"] and gate[r["artifact"]] == r["backend"]}
    stored = engine.load_profile()["models"]["tiny-test-cnn"]
    assert stored["source"] == "bench" and stored["ranking"] == ranking
    chosen = engine.open_backend(bundle, "auto")
    assert (chosen.spec.name, chosen.artifact.name) == (ranking[0]["backend"], ranking[0]["artifact"])


def test_artificial_ranking_favouring_openvino_is_what_auto_picks(tiny_bundle):
    from dermsort.bench.core import profile_ranking

    rows = [
        {"kind": "artifact", "backend": "onnxruntime", "artifact": "onnx-fp32", "precision": "fp32", "passed": True,
         "e2e_images_per_s": 100.0, "agreement": 1.0},
        {"kind": "artifact", "backend": "openvino", "artifact": "openvino-fp16", "precision": "fp16", "passed": True,
         "e2e_images_per_s": 500.0, "agreement": 0.99},
        # fastest, but its decisions disagree with the reference: never ranked
        {"kind": "artifact", "backend": "openvino", "artifact": "onnx-fp32", "precision": "fp32", "passed": False,
         "e2e_images_per_s": 900.0, "agreement": 0.5},
        {"kind": "baseline", "backend": "onnxruntime", "artifact": "onnx-fp32", "precision": "fp32", "passed": False,
         "e2e_images_per_s": 50.0},
    ]
    ranking = profile_ranking(rows)
    assert [(e["backend"], e["artifact"]) for e in ranking] == [("openvino", "openvino-fp16"), ("onnxruntime", "onnx-fp32")]
    bundle, _ = load_bundle(tiny_bundle)
    engine.save_profile(bundle, ranking, source="bench")
    chosen = engine.open_backend(bundle, "auto")
    assert (chosen.spec.name, chosen.artifact.name) == ("openvino", "openvino-fp16")
    chosen.close()


def test_backend_filter_and_no_profile(tiny_bundle, tmp_path):
    out = tmp_path / "r"
    res = _bench([str(tiny_bundle), "--data", str(DATA / "ph2"), "--max-images", "4", "--backends", "onnxruntime",
                  "--no-profile", "--no-dermosort", "--out", str(out), *FAST])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["dermosort_style"] is None
    assert {r["backend"] for r in report["rows"] if r["kind"] == "artifact"} == {"onnxruntime"}
    assert report["profile"] is None and engine.load_profile() == {}


def test_child_peak_rss_is_its_own_not_the_parents(tiny_bundle):
    # Linux ru_maxrss survives fork+exec; the worker must report the child's own peak (VmHWM)
    from dermsort.bench.measure import run_worker

    ballast = bytearray(400 * 2**20)
    ballast[::4096] = b"\x01" * len(ballast[::4096])
    image = sorted((DATA / "ph2" / "images").glob("*.jpg"))[0]
    result = run_worker({"bundle": str(tiny_bundle), "backend": "onnxruntime", "artifact": "onnx-fp32",
                         "files": [str(image)], "mode": "cold", "batch_size": 1})
    del ballast
    assert 0 < result["peak_rss_mb"] < 350 and 0 < result["cold_start_s"] < result["process_wall_s"]


def test_wilson_interval_and_figures():
    from dermsort.bench import metrics

    # the Wilson interval itself is dermsort.train.metrics.wilson_ci (tests/train/test_one_metrics_module.py)
    figures = metrics.operating_figures([1] * 10 + [0, 0], ["review"] * 9 + ["benign"] * 3, [0.9] * 9 + [0.2, 0.1, 0.6])
    low, high = figures["sensitivity_ci95"]
    assert math.isclose(low, 0.5958, abs_tol=1e-3) and math.isclose(high, 0.9821, abs_tol=1e-3)
    assert figures["specificity_ci95"][1] == 1.0 and metrics.operating_figures([], [], [])["sensitivity_ci95"] is None
    figures = metrics.operating_figures([1, 1, 0, 0], ["review", "benign", "benign", "review"], [0.9, 0.2, 0.1, 0.6])
    assert figures["sensitivity"] == 0.5 and figures["specificity"] == 0.5 and figures["work_reduction"] == 0.5
    assert figures["auc"] == 0.75 and figures["missed_malignant"] == 1
    same = metrics.agreement(["benign", "review"], ["benign", "review"], [0.1, 0.9], [0.1, 0.9])
    assert same["agreement"] == 1.0 and same["max_abs_dp"] == 0.0


def test_labelled_data_cap_keeps_both_classes_and_bad_input_is_one_line(tmp_path):
    from dermsort.bench.data import load_labelled
    from dermsort.runtime.errors import DermsortError

    images = load_labelled([DATA / "isic2020"], "test", max_images=10)
    assert len(images) == 10 and 1 <= sum(i.malignant for i in images) < 10
    assert images == load_labelled([DATA / "isic2020"], "test", max_images=10)  # seeded
    with pytest.raises(DermsortError, match="labelled data not found"):
        load_labelled([tmp_path])


def test_pipeline_benchmark_runs_on_small_generated_jpegs(tiny_bundle, tmp_path):
    from studies.pipeline import main

    res = CliRunner().invoke(main, ["--model", str(tiny_bundle), "--artifacts", "onnx-fp32", "--real", "4",
                                    "--large", "800x600", "--n-large", "2", "--reps", "1", "--naive-reps", "1",
                                    "--cold-reps", "1", "--out", str(tmp_path / "p")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "p" / "pipeline.json").read_text())
    assert [s["set"] for s in report["sets"]] == ["real", "large 0 MP"]
    for s in report["sets"]:
        row = s["artifacts"]["onnx-fp32"]
        assert row["pipeline_images_per_s"] > 0 and row["naive_images_per_s"] > 0 and row["ratio_to_decode_alone"] > 0
        assert len(s["dermosort_s"]) == 1 and row["speedup_vs_dermosort"] == pytest.approx(
            row["pipeline_images_per_s"] / s["dermosort_images_per_s"])
    fresh = report["fresh_process"]["onnx-fp32"]
    assert fresh["cold_start_s"] > 0 and all(v > 0 for v in fresh["peak_rss_mb"].values())
    assert {v["target"].split()[0] for v in report["verdicts"]} >= {"pipeline", "cold", "peak"}


def test_naive_torch_eager_runner_matches_the_onnx_reference(tiny_bundle):
    # the baseline used with --checkpoint: PyTorch eager FP32, full decode, batch 1
    from model_factory import _tiny_model

    from dermsort.bench.naive import backend_runner, run_naive, torch_runner
    from dermsort.runtime.backends.base import create_backend

    bundle, _ = load_bundle(tiny_bundle)
    paths = sorted((DATA / "ham10000-sample" / "images").glob("*.jpg"))[:4]
    eager = torch_runner(_tiny_model(), bundle.metadata, threshold=bundle.get("onnx-fp32").threshold)
    _, by_torch = run_naive(eager, paths)
    onnx = backend_runner(create_backend("onnxruntime", bundle, bundle.get("onnx-fp32")).load(), "naive onnx")
    _, by_onnx = run_naive(onnx, paths)
    onnx.close()
    assert "PyTorch eager" in eager.label
    for a, b in zip(by_torch, by_onnx):
        assert a["file"] == b["file"] and abs(a["p_malignant"] - b["p_malignant"]) < 1e-5


def test_whole_process_launcher_reports_the_commands_own_time_and_memory():
    # the child's ru_maxrss must not carry this (big) process's RSS across fork + exec
    from studies.wholeproc import measure

    ballast = bytearray(300 * 2**20)
    ballast[::4096] = b"\x01" * len(ballast[::4096])
    small = measure([sys.executable, "-c", "pass"])
    big = measure([sys.executable, "-c", "import time; b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096]); "
                                         "t = time.process_time()\nwhile time.process_time() - t < 0.3: pass"])
    del ballast
    assert small["peak_rss_mb"] < 100 and big["peak_rss_mb"] > 200
    assert big["wall_s"] >= 0.3 and big["cpu_s"] >= 0.25 and small["rc"] == 0
    with pytest.raises(RuntimeError, match="exited 3"):
        measure([sys.executable, "-c", "raise SystemExit(3)"])


def test_whole_process_table_in_one_run(tiny_bundle, tmp_path):
    from studies.wholeproc import main

    assert main(["--model", str(tiny_bundle), "--real", "3", "--n-large", "2", "--large", "640x480", "--reps", "1",
                 "--out", str(tmp_path / "w")]) == 0
    report = json.loads((tmp_path / "w" / "whole-process.json").read_text())
    assert [s["set"] for s in report["sets"]] == ["3 dataset images", "0 MP JPEGs", "1 image"]
    for s in report["sets"]:
        arms = {"dermsort sort", "DermoSort-style", "naive, same model", "decode-only floor"}
        one = {"dermsort sort, cold (new cache dir)", "bare imports"} if s["n_images"] == 1 else set()
        assert arms | one == set(s["rows"])
        for row in s["rows"].values():
            assert row["wall_s"] > 0 and row["cpu_s"] > 0 and row["peak_rss_mb"] > 10
        ratios = s["paired_ratios"]
        assert ratios["dermosort_over_sort"] == pytest.approx(
            s["rows"]["DermoSort-style"]["wall_s"] / s["rows"]["dermsort sort"]["wall_s"])
        assert s["rows"]["dermsort sort"]["backend"]
    targets = {v["target"] for v in report["verdicts"]}
    assert any("DermoSort-style" in t for t in targets) and any("floor" in t for t in targets)
    assert "DermoSort-style / sort" in (tmp_path / "w" / "whole-process.md").read_text()


def test_bench_takes_an_artifact_out_of_auto_only_on_significant_disagreement():
    """The gate decides acceptance; the bench overrides it only when disagreement here is significant."""
    from dermsort.bench.core import _score

    labels = {f"f{i}": int(i < 40) for i in range(200)}
    ref = [{"file": f, "decision": "review" if y else "benign", "p_malignant": 0.9 if y else 0.1}
           for f, y in labels.items()]

    def row(flips: int) -> dict:
        dec = [dict(d) for d in ref]
        for d in dec[100:100 + flips]:
            d["decision"] = "review"  # benign images flipped to review
        return {"kind": "artifact", "error": "", "accepted": True, "decisions": dec}

    rows = [{"kind": "artifact", "error": "", "accepted": True, "reference": True, "decisions": ref},
            row(7), row(14)]  # 96.5 % (CI up to 98.3 %) and 93 % (CI up to 95.8 %)
    _score(rows, labels, 0.97)
    assert rows[0]["passed"] and rows[1]["passed"] and not rows[2]["passed"]
    assert rows[1]["agreement"] == 0.965 and rows[1]["agreement_ci95"][1] > 0.97 > rows[2]["agreement_ci95"][1]
