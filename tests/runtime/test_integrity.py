"""What changes a decision is integrity-checked and never silent: the manifest's threshold and metadata
(issue 12 item 5), a --threshold above the validated one (6), artifacts the parity gate rejected (7),
the decision rule at its boundary, and exact exit codes of the installed console script."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dermsort.cli import main
from dermsort.runtime.bundle import decision_digest, load_bundle, write_manifest
from dermsort.runtime.errors import ModelError
from fault_harness import small_real_images, tree

CONSOLE = Path(sys.executable).with_name("dermsort")


def _copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _images(folder: Path, n: int = 6) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for p in small_real_images(n, 0):
        shutil.copyfile(p, folder / p.name)
    return folder


def _console(*args: str) -> subprocess.CompletedProcess:
    """The installed ``dermsort`` console script, as a user runs it."""
    assert CONSOLE.is_file(), f"the dermsort console script is not installed beside {sys.executable}"
    return subprocess.run([str(CONSOLE), *args], capture_output=True, text=True, timeout=180)


# ---------------------------------------------------------------------------------------- item 5
def test_edited_threshold_in_the_manifest_is_refused(tiny_bundle, tmp_path):
    bundle = _copy_bundle(tiny_bundle, tmp_path / "b")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["artifacts"][0]["threshold"] = 0.999  # would send everything to benign/
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="modified after export"):
        load_bundle(bundle)
    res = _console("sort", str(_images(tmp_path / "in", 2)), "--out", str(tmp_path / "o"), "--model", str(bundle))
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines() == [res.stderr.strip()] and "modified after export" in res.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("field", ["threshold", "malignant_classes", "preprocess"])
def test_metadata_edited_and_resealed_is_caught_by_the_model_file(tiny_bundle, tmp_path, field):
    """Even a manifest whose integrity record was recomputed cannot change what the ONNX file itself says."""
    bundle = _copy_bundle(tiny_bundle, tmp_path / "b")
    manifest = json.loads((bundle / "manifest.json").read_text())
    meta = manifest["metadata"]
    if field == "threshold":
        meta["threshold"] = 0.999
    elif field == "malignant_classes":
        meta["malignant_classes"] = ["benign"]
    else:
        meta["preprocess"]["mean"] = [0.0, 0.0, 0.0]
    manifest.pop("integrity")
    manifest["integrity"] = {"sha256": decision_digest(manifest)}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    res = _console("sort", str(_images(tmp_path / "in", 2)), "--out", str(tmp_path / "o"), "--model", str(bundle),
                   "--backend", "onnxruntime")
    assert res.returncode == 2, res.stderr
    assert "differ from the metadata inside" in res.stderr and field in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_manifest_without_integrity_record_is_refused(tiny_bundle, tmp_path):
    bundle = _copy_bundle(tiny_bundle, tmp_path / "b")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest.pop("integrity")
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="no integrity record"):
        load_bundle(bundle)


def test_the_bundled_default_model_passes_its_integrity_checks():
    bundle, _ = load_bundle(None)
    assert json.loads((bundle.root / "manifest.json").read_text())["integrity"]["sha256"] == decision_digest(
        json.loads((bundle.root / "manifest.json").read_text()))


# ---------------------------------------------------------------------------------------- item 6
def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_threshold_above_the_validated_one_warns_and_marks_every_row(tiny_bundle, tmp_path):
    inp = _images(tmp_path / "in", 4)
    validated = load_bundle(tiny_bundle)[0].get("onnx-fp32").threshold
    res = _console("sort", str(inp), "--out", str(tmp_path / "hi"), "--model", str(tiny_bundle), "--backend",
                   "onnxruntime", "--threshold", str(min(1.0, validated + 0.2)))
    assert res.returncode == 0, res.stderr
    assert "WARNING" in res.stderr and "ABOVE the validated threshold" in res.stderr and f"{validated:.4f}" in res.stderr
    assert "OVERRIDDEN" in res.stdout
    assert {r["threshold_overridden"] for r in _rows(tmp_path / "hi")} == {"True"}
    res = _console("sort", str(inp), "--out", str(tmp_path / "lo"), "--model", str(tiny_bundle), "--backend",
                   "onnxruntime", "--threshold", str(validated / 2))
    assert res.returncode == 0 and "WARNING" not in res.stderr, res.stderr  # stricter: no warning, still recorded
    assert {r["threshold_overridden"] for r in _rows(tmp_path / "lo")} == {"True"}
    res = _console("sort", str(inp), "--out", str(tmp_path / "none"), "--model", str(tiny_bundle), "--backend",
                   "onnxruntime")
    assert {r["threshold_overridden"] for r in _rows(tmp_path / "none")} == {"False"}


# ---------------------------------------------------------------------------------------- item 7
def _with_rejected_openvino(src: Path, dst: Path) -> Path:
    bundle_dir = _copy_bundle(src, dst)
    bundle, _ = load_bundle(bundle_dir)
    art = bundle.get("openvino-fp16")
    art.accepted, art.override = False, "--allow-parity-failure: openvino-fp16 REJECTED: 9 flips"
    # as an export with --allow-parity-failure writes it: the verdict sealed inside the file too
    # (a manifest-only edit is refused as such: tests/runtime/test_signing.py)
    from dermsort.export.seal import embed_artifact_records

    embed_artifact_records(bundle.root, bundle.artifacts)
    write_manifest(bundle)
    return bundle_dir


@pytest.mark.parametrize("how", ["precision", "backend", "artifact-path"])
def test_rejected_artifact_is_refused_unless_explicitly_allowed(tiny_bundle, tmp_path, how):
    bundle = _with_rejected_openvino(tiny_bundle, tmp_path / "b")
    inp = _images(tmp_path / "in", 3)
    pick = {"precision": ["--model", str(bundle), "--precision", "fp16"],
            "backend": ["--model", str(bundle), "--backend", "openvino"],
            "artifact-path": ["--model", str(bundle / "openvino" / "model_fp16.xml")]}[how]
    res = _console("sort", str(inp), "--out", str(tmp_path / "o"), *pick)
    if how == "backend":  # openvino can still run the accepted ONNX FP32: the rejected IR is never chosen
        assert res.returncode == 0, res.stderr
        assert {r["artifact"] for r in _rows(tmp_path / "o")} == {"onnx-fp32"}
        return
    assert res.returncode == 2, res.stderr
    assert "REJECTED" in res.stderr and "--allow-rejected-artifact" in res.stderr
    assert not (tmp_path / "o").exists()
    res = _console("sort", str(inp), "--out", str(tmp_path / "o"), *pick, "--allow-rejected-artifact")
    assert res.returncode == 0, res.stderr
    assert "REJECTED" in res.stderr
    rows = _rows(tmp_path / "o")
    assert {r["artifact"] for r in rows} == {"openvino-fp16"} and {r["artifact_accepted"] for r in rows} == {"False"}


# ---------------------------------------------------------------------------------------- the rule at its boundary
def test_decision_rule_is_strictly_below_the_threshold(tiny_bundle, tmp_path):
    """``p < threshold`` -> benign; ``p == threshold`` -> review (a controlled probability, no rounding)."""
    from dermsort.runtime.engine import open_backend
    from dermsort.runtime.reading import Decoded
    from dermsort.runtime.scan import Candidate
    from dermsort.runtime.sorter import SortOptions, Sorter

    bundle, _ = load_bundle(tiny_bundle)
    t = 0.3125  # exactly representable
    sorter = Sorter(_images(tmp_path / "in", 1), SortOptions(out=tmp_path / "o", threshold=t),
                    open_backend(bundle, "onnxruntime"))
    clean = Decoded(Candidate(tmp_path / "x.jpg", 1, 1))
    assert sorter.decide(clean, t)[0] == "review"
    assert sorter.decide(clean, math.nextafter(t, 0.0))[0] == "benign"
    assert sorter.decide(clean, math.nextafter(t, 1.0))[0] == "review"
    assert sorter.decide(Decoded(clean.cand, concerns=["blank"]), 0.0)[0] == "review"
    assert sorter.decide(Decoded(clean.cand, error="corrupt"), 0.0)[0] == "review"
    assert sorter.decide(clean, float("nan"))[0] == "review"


def test_an_image_exactly_on_the_threshold_goes_to_review_end_to_end(tiny_bundle, tmp_path, capsys):
    """The same boundary through the real pipeline: the threshold set to an image's own float32 p."""
    from dermsort.runtime.engine import open_backend
    from dermsort.runtime.preprocess import preprocess_file

    inp = _images(tmp_path / "in", 1)
    img = next(inp.iterdir())
    bundle, _ = load_bundle(tiny_bundle)
    backend = open_backend(bundle, "onnxruntime")
    import numpy as np

    p = float(backend.p_malignant(backend.predict(np.stack([preprocess_file(img, bundle.metadata.preprocess)[0]])))[0])
    rc = main(["sort", str(inp), "--out", str(tmp_path / "o"), "--model", str(tiny_bundle), "--backend",
               "onnxruntime", "--threshold", repr(p), "--json"])
    assert rc == 0
    assert tree(tmp_path / "o" / "review") and not tree(tmp_path / "o" / "benign")
    rc = main(["sort", str(inp), "--out", str(tmp_path / "o2"), "--model", str(tiny_bundle), "--backend",
               "onnxruntime", "--threshold", repr(math.nextafter(p, 1.0)), "--json"])
    assert rc == 0 and tree(tmp_path / "o2" / "benign") and not tree(tmp_path / "o2" / "review")


# ---------------------------------------------------------------------------------------- exit codes
def test_console_script_exit_codes_are_exactly_as_documented(tiny_bundle, tmp_path):
    """README: 0 sorted, 2 a problem with the command/model/output, 3 some files left in place (not sorted)."""
    inp = _images(tmp_path / "in", 2)
    assert _console("sort", str(inp), "--out", str(tmp_path / "o"), "--model", str(tiny_bundle)).returncode == 0
    assert _console("sort", str(tmp_path / "nope"), "--model", str(tiny_bundle)).returncode == 2
    assert _console("sort", str(inp), "--out", str(inp / "x"), "--model", str(tiny_bundle)).returncode == 2
    assert _console("sort", str(inp), "--model", str(tmp_path / "no-model")).returncode == 2
    assert _console("sort", str(inp), "--threshold", "7", "--model", str(tiny_bundle)).returncode == 2
    busy = _images(tmp_path / "in2", 2)
    victim = sorted(busy.iterdir())[0]
    with open(victim, "ab"):  # a writer still has it open: not sorted, left in place -> exit 3
        res = _console("sort", str(busy), "--out", str(tmp_path / "o3"), "--model", str(tiny_bundle))
    assert res.returncode == 3, res.stderr
    assert "left in place" in res.stdout and "still open for writing" in res.stdout
    assert res.stderr.strip().splitlines()[-1].startswith("dermsort: error: 1 file(s) could not be sorted")
    res = _console("sort", str(busy), "--out", str(tmp_path / "o3"), "--model", str(tiny_bundle))
    assert res.returncode == 0, res.stderr
