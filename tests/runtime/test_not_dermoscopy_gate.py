"""The not-dermoscopy gate (issue 25): anything that is not a dermoscopy image goes to review/ with its own
reason, on every accepted artifact, judged on real non-dermoscopy photos (../shared/data/ood) and real
dermoscopy images; the export's parity gate counts a gate flip "out -> in" like a malignant-to-benign flip."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import DATA, labelled
from dermsort.cli import cli
from dermsort.runtime.backends.base import backend_installed
from dermsort.runtime.bundle import DEFAULT_BUNDLE, load_bundle
from dermsort.runtime.counts import NOT_DERMOSCOPY
from dermsort.runtime.ood import read_ood

BUNDLE, _ = load_bundle(DEFAULT_BUNDLE)
GATE = BUNDLE.metadata.gate

needs_gate = pytest.mark.skipif(not GATE.enabled, reason="the bundled model has no not-dermoscopy gate")


def _copy(rows: list[dict], folder: Path, prefix: str = "") -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for row in rows:
        name = prefix + os.path.basename(row["path"])
        shutil.copy(row["path"], folder / name)
        names.append(name)
    return names


def _sort(inp: Path, out: Path, *extra: str) -> dict:
    res = CliRunner().invoke(cli, ["sort", str(inp), "--out", str(out), "--json", *extra], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.output[res.output.index("{"):])


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "results.csv", newline="") as fh:
        return {os.path.basename(r["file"]): r for r in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def clinic(tmp_path_factory) -> tuple[Path, list[str], list[str], dict]:
    """A clinic folder: dermoscopy test images (three sets, two cameras) mixed with clinical photos of skin
    lesions (malignant ones among them) and everyday photos, all real; sorted once with the bundled model."""
    root = tmp_path_factory.mktemp("clinic")
    inp = root / "in"
    derm = _copy(labelled("ph2", "test", 4) + labelled("ham10000", "test", 4) + labelled("isic2020", "test", 4), inp)
    ood = read_ood(DATA / "ood", "test")
    clinical = [r for r in ood if r["kind"] == "clinical-photo"]
    picked = ([r for r in clinical if r["malignant_class"]][:4] + [r for r in clinical if not r["malignant_class"]][:4]
              + [r for r in ood if r["kind"] == "everyday-photo"][:3])
    others = _copy(picked, inp, prefix="photo_")
    summary = _sort(inp, root / "out", "--backend", "onnxruntime")
    return root / "out", derm, others, summary


def _by_gate(r: dict) -> bool:
    return r["reason"].startswith(NOT_DERMOSCOPY)


@needs_gate
def test_clinic_folder_never_sends_a_photo_to_benign(clinic):
    """Clinical and everyday photos mixed with dermoscopy images: every photo goes to review/, almost all
    of them stopped by the gate (a photo the gate lets through is still judged by p(malignant)); every
    dermoscopy image is judged by the model or, rarely, stopped by the gate (review/, never lost work silently)."""
    out, derm, others, _ = clinic
    rows = _rows(out)
    for name in others:
        r = rows[name]
        assert r["decision"] == "review" and r["dest"].startswith("review/") and (out / r["dest"]).is_file(), name
        assert _by_gate(r) == (float(r["gate_score"]) >= GATE.threshold)
    stopped = sum(_by_gate(rows[n]) for n in others)
    assert stopped >= len(others) - 1, f"only {stopped}/{len(others)} photos stopped by the gate"
    judged = 0
    for name in derm:
        r = rows[name]
        assert _by_gate(r) or r["reason"].startswith("p_malignant "), (name, r["reason"])
        judged += r["reason"].startswith("p_malignant ")
    assert judged >= len(derm) - 2, f"the gate stopped {len(derm) - judged}/{len(derm)} dermoscopy images"


@needs_gate
def test_gate_score_is_the_last_column_and_counted_apart(clinic):
    out, derm, others, summary = clinic
    with open(out / "results.csv", newline="") as fh:
        header = next(csv.reader(fh))
    assert header[-1] == "gate_score" and header[:4] == ["file", "dest", "sha256", "decision"]
    rows = _rows(out)
    assert summary["not_dermoscopy"] == sum(_by_gate(r) for r in rows.values()) >= len(others) - 1
    assert summary["images"] == len(derm) + len(others)


@needs_gate
def test_review_page_has_a_not_dermoscopy_section_with_thumbnails(clinic):
    out, _, others, _ = clinic
    page = (out / "report.html").read_text()
    start = page.index('id="not-dermoscopy"')
    section = page[start:page.index("</section>", start)]
    stopped = [n for n, r in _rows(out).items() if _by_gate(r)]
    assert f"({len(stopped)})" in section
    for name in stopped:
        assert name in section
    assert section.count("<img ") == len(stopped)


@needs_gate
def test_info_states_the_gate_and_its_validated_rates():
    res = CliRunner().invoke(cli, ["info"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    lines = [line for line in res.output.splitlines() if line.startswith("gate") or "dermoscopy rejected" in line]
    assert lines and f"{GATE.threshold:.4f}" in lines[0]
    # which features it reads (the bundled gate: the penultimate ones and the stages' means)
    assert GATE.details["features"].split(", mean of")[0] in lines[0]
    assert any("val: dermoscopy rejected" in line for line in lines)


def _runnable() -> list[str]:
    return [a.name for a in BUNDLE.artifacts if a.accepted and backend_installed(a.backend)[0]
            and a.backend in ("onnxruntime", "openvino")]


def _ood_benign(artifact: str, tmp_path: Path) -> dict[str, tuple[int, int]]:
    """Sort the ood test split with one artifact: {source: (images in benign/, images)}."""
    rows = read_ood(DATA / "ood", "test")
    inp = tmp_path / artifact
    names = _copy(rows, inp)
    art = BUNDLE.get(artifact)
    res = CliRunner().invoke(cli, ["sort", str(inp), "--out", str(tmp_path / f"{artifact}-out"), "--backend",
                                   art.backend, "--precision", art.precision], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    got = _rows(tmp_path / f"{artifact}-out")
    assert {r["artifact"] for r in got.values()} == {artifact}
    by_source: dict[str, list[str]] = {}
    for row, name in zip(rows, names):
        by_source.setdefault(row["source"], []).append(got[name]["decision"])
    return {s: (d.count("benign"), len(d)) for s, d in by_source.items()}


REFERENCE = next(a.name for a in BUNDLE.artifacts if a.path == BUNDLE.reference)


@needs_gate
@pytest.mark.parametrize("artifact", _runnable())
def test_issue_25_target_every_artifact_at_most_1_percent_of_each_ood_test_source_in_benign(artifact, tmp_path):
    """Issue 25 for every accepted artifact this machine runs: at most 1 % of each ood test source in benign/
    (measured: 0/81 SD-198 clinical photos, 0/9 everyday photos; docs/MODEL_CARD.md), and never more than
    the reference."""
    got = _ood_benign(artifact, tmp_path)
    for source, (benign, n) in got.items():
        assert benign <= 0.01 * n, f"{artifact}: {benign}/{n} {source} images in benign/"
    if artifact != REFERENCE:
        ref = _ood_benign(REFERENCE, tmp_path)
        assert sum(b for b, _ in got.values()) <= sum(b for b, _ in ref.values())


def _gate_rejected(name: str) -> tuple[int, int]:
    from dermsort.runtime.backends import create_backend
    from dermsort.runtime.preprocess import preprocess_file

    ref = BUNDLE.get(REFERENCE)
    backend = create_backend(ref.backend, BUNDLE, ref).load()
    rows = labelled(name, "test")
    scores = []
    for start in range(0, len(rows), 32):
        batch = np.stack([preprocess_file(r["path"], BUNDLE.metadata.preprocess)[0] for r in rows[start:start + 32]])
        scores.append(backend.infer(batch)[1])
    return int((np.concatenate(scores) >= GATE.threshold).sum()), len(rows)


@needs_gate
@pytest.mark.parametrize("name", ["ham10000", "isic2019", "isic2020", "ph2"])
def test_issue_25_target_each_dermoscopy_test_set_loses_at_most_2_percent_to_the_gate(name):
    """Reference artifact, the set's whole test split (isic2020: screening patients, other cameras)."""
    rejected, n = _gate_rejected(name)
    assert rejected <= 0.02 * n, f"the gate rejects {rejected}/{n} {name} test images"


@needs_gate
def test_int8_artifacts_keep_the_gate_in_float():
    import onnx

    from dermsort.export.onnx_export import gate_nodes

    for art in BUNDLE.artifacts:
        if art.format != "onnx" or art.precision != "int8":
            continue
        graph = onnx.load(os.fspath(BUNDLE.root / art.path)).graph
        producers = {o: n for n in graph.node for o in n.output}
        names = set(gate_nodes(graph, BUNDLE.metadata))
        gate_matmuls = [n for n in graph.node if n.name in names and n.op_type == "MatMul"]
        assert gate_matmuls, "the gate's MatMul is not in the graph"
        for node in gate_matmuls:
            for name in node.input:
                src = producers.get(name)
                assert src is None or src.op_type != "DequantizeLinear", (art.name, node.name)


def test_parity_counts_a_gate_out_to_in_flip_like_malignant_to_benign():
    from dermsort.export import parity

    rng = np.random.default_rng(0)
    y = np.r_[np.ones(40, int), np.zeros(60, int)]
    p = np.r_[rng.uniform(0.3, 1, 40), rng.uniform(0, 0.2, 60)]
    g_ref = np.r_[rng.uniform(0, 0.3, 100), rng.uniform(0.7, 1.0, 30)]  # 100 dermoscopy, 30 photos
    same = parity.add_gate_parity(parity.compare("a", p, p, y, 0.25), g_ref.copy(), g_ref, 0.5)
    # every malignant image caught, target 95 %: the reference's margin allows floor(40 - 38) = 2 such flips
    assert same.passed and same.gate_out_to_in == 0 and same.malignant_to_benign_allowed == 2

    def leak(n: int):
        g = g_ref.copy()
        g[-n:] = 0.49  # n photos the reference rejects now pass the gate
        return parity.add_gate_parity(parity.compare("a", p, p, y, 0.25), g, g_ref, 0.5)

    assert leak(2).passed and leak(2).gate_out_to_in == 2
    worse = leak(3)
    assert worse.gate_out_to_in == 3 and not worse.checks["malignant_to_benign"] and not worse.passed
    assert "not-dermoscopy gate" in worse.message
