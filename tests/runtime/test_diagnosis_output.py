"""A diagnosis head's top class (top_dx, top_dx_p) in results.csv, the journal, ``sort --json`` and
``info``, with real tiny ONNX models (7-class HAM10000 head and the binary head) on real images.

The top class is for display only: the decision stays ``p_malignant < threshold`` with every input
check passed, where p_malignant is the sum of the malignant classes' probabilities."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dermsort.cli import cli
from dermsort.runtime.bundle import load_bundle
from dermsort.runtime.diagnosis import DIAGNOSIS_NAMES, top_diagnoses, validation_lines
from dermsort.runtime.journal import JournalState
from dermsort.runtime.records import Intent
from dermsort.runtime.results_csv import RESULT_FIELDS, results_csv_text
from dermsort.runtime.metadata import Validation
from dermsort.runtime.preprocess import preprocess_file

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
HAM_IMAGES = sorted((DATA / "ham10000-sample" / "images").glob("*.jpg"))
DX_CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
DX_MALIGNANT = ["mel", "bcc", "akiec"]
OLD_FIELDS = ["file", "dest", "sha256", "decision", "p_malignant", "threshold", "backend", "artifact",
              "model_id", "time", "reason", "mode"]
CORRUPT = "corrupt.jpg"

VALIDATION = Validation(
    split="test", datasets=["ham10000-sample", "ph2"], n_images=40, n_malignant=12, sensitivity=0.95,
    threshold_basis={"rule": "largest threshold with sensitivity >= 0.95 on every set", "binding": "ph2",
                     "sets": {"pooled": {"n_malignant": 60, "threshold": 0.31},
                              "ph2": {"n_malignant": 52, "threshold": 0.27}}},
    per_dataset={"ham10000-sample": {"n_images": 30, "n_malignant": 9, "sensitivity": 1.0,
                                     "sensitivity_ci": [0.7, 1.0], "specificity": 0.4, "work_reduction": 0.3,
                                     "auc": 0.81, "auc_ci": [0.7, 0.9]},
                 "ph2": {"n_images": 10, "n_malignant": 3, "sensitivity": None}},
    per_diagnosis={"melanoma": {"n": 7, "sensitivity": 6 / 7, "sensitivity_ci": [0.5, 0.97], "missed": 1},
                   "scc/ak": {"n": 0, "sensitivity": None, "sensitivity_ci": None, "missed": 0}})


def _run(args: list[str]):
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res


@pytest.fixture(scope="module")
def dx_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_factory import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("dx-bundle"), openvino=False, classes=DX_CLASSES,
                            malignant_classes=DX_MALIGNANT, model_id="tiny-dx-cnn", validation=VALIDATION,
                            logit_scale=30.0)


@pytest.fixture(scope="module")
def binary_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_factory import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("bin-bundle"), openvino=False)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """Ten real HAM10000 images and one corrupt file (not classifiable: must get empty top_dx)."""
    folder = tmp_path / "in"
    folder.mkdir()
    for p in HAM_IMAGES[:10]:
        shutil.copyfile(p, folder / p.name)
    (folder / CORRUPT).write_bytes(HAM_IMAGES[0].read_bytes()[:300])
    return folder


def _rows(out: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(out / "results.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def _journal_intents(out: Path) -> list[dict]:
    lines = (out / ".dermsort" / "journal.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == "intent"]


def _reference_probabilities(bundle: Path, files: list[Path]) -> dict[str, np.ndarray]:
    """The model run directly with onnxruntime on the runtime's own preprocessing, one image at a time."""
    import onnxruntime as ort

    b, _ = load_bundle(bundle)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(bundle / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    out = {}
    for f in files:
        tensor, info = preprocess_file(f, b.metadata.preprocess)
        assert not info.concerns, (f, info.concerns)
        out[f.name] = sess.run(None, {b.metadata.input_name: tensor[None]})[0][0].astype(np.float64)
    return out


def test_diagnosis_head_fields_in_results_journal_and_json(dx_bundle, images, tmp_path):
    out = tmp_path / "out"
    res = _run(["sort", str(images), "--out", str(out), "--model", str(dx_bundle), "--backend", "onnxruntime",
                "--json"])
    assert json.loads(res.output)["sorted"] == 11
    meta = load_bundle(dx_bundle)[0].metadata
    assert meta.classes == DX_CLASSES and meta.malignant_indices() == [4, 1, 0]
    header, rows = _rows(out)
    assert header == RESULT_FIELDS and header[: len(OLD_FIELDS)] == OLD_FIELDS  # new columns only at the end
    assert header[header.index("top_dx") + 1] == "top_dx_p"
    by_name = {Path(r["file"]).name: r for r in rows}
    assert set(by_name) == {p.name for p in HAM_IMAGES[:10]} | {CORRUPT}

    ref = _reference_probabilities(dx_bundle, sorted(images.glob("ISIC_*.jpg")))
    threshold = meta.threshold
    decisions, tops = set(), set()
    for name, probs in ref.items():
        row = by_name[name]
        assert row["top_dx"] in DX_CLASSES
        top_p = float(row["top_dx_p"])
        assert 0.0 < top_p <= 1.0 and top_p >= 1 / 7 - 1e-6
        # the top class is the argmax of the model's own output (allowing float ties between batch sizes)
        assert top_p == pytest.approx(probs.max(), abs=2e-6)
        assert probs[DX_CLASSES.index(row["top_dx"])] >= probs.max() - 2e-6
        # p_malignant is the sum of the malignant classes, recomputed from the model directly
        p_mal = sum(probs[DX_CLASSES.index(c)] for c in DX_MALIGNANT)
        assert float(row["p_malignant"]) == pytest.approx(p_mal, abs=2e-6)
        # the decision is exactly the threshold rule (images that are not within float noise of it)
        assert float(row["threshold"]) == pytest.approx(threshold)
        if abs(p_mal - threshold) > 1e-5:
            assert row["decision"] == ("benign" if p_mal < threshold else "review"), (name, p_mal, threshold)
        decisions.add(row["decision"])
        tops.add(row["top_dx"])
    assert decisions == {"benign", "review"}  # the tiny model's threshold splits the images: both occur
    assert len(tops) >= 2  # and its top class is not the same for every image

    bad = by_name[CORRUPT]
    assert bad["decision"] == "review" and bad["top_dx"] == "" and bad["top_dx_p"] == "" and bad["p_malignant"] == ""

    intents = {Path(r["file"]).name: r for r in _journal_intents(out)}
    for name, row in by_name.items():
        rec = intents[name]
        assert rec["top_dx"] == (row["top_dx"] or None)
        assert rec["top_dx_p"] == (float(row["top_dx_p"]) if row["top_dx_p"] else None)

    # sort --json decisions (dry run lists them) carry the same fields
    dry = json.loads(_run(["sort", str(images), "--out", str(tmp_path / "dry"), "--model", str(dx_bundle),
                           "--backend", "onnxruntime", "--dry-run", "--json"]).output)
    dry_by_name = {Path(d["file"]).name: d for d in dry["decisions"]}
    for name in ref:
        assert dry_by_name[name]["top_dx"] == by_name[name]["top_dx"]
        assert dry_by_name[name]["top_dx_p"] == pytest.approx(float(by_name[name]["top_dx_p"]), abs=2e-6)
        assert dry_by_name[name]["decision"] == by_name[name]["decision"]
    assert dry_by_name[CORRUPT]["top_dx"] is None and dry_by_name[CORRUPT]["top_dx_p"] is None
    # and the human per-image lines show the top class
    text = _run(["sort", str(images), "--out", str(tmp_path / "dry"), "--model", str(dx_bundle),
                 "--backend", "onnxruntime", "--dry-run"]).output
    first = HAM_IMAGES[0].name
    line = next(l for l in text.splitlines() if l.rstrip().endswith("]") and first in l)
    assert f"[top dx: {by_name[first]['top_dx']} " in line
    assert "top dx" not in next(l for l in text.splitlines() if CORRUPT in l)


def test_binary_model_leaves_the_fields_empty(binary_bundle, images, tmp_path):
    out = tmp_path / "out"
    _run(["sort", str(images), "--out", str(out), "--model", str(binary_bundle), "--backend", "onnxruntime"])
    header, rows = _rows(out)
    assert header == RESULT_FIELDS and len(rows) == 11
    assert all(r["top_dx"] == "" and r["top_dx_p"] == "" for r in rows)
    assert all(r["p_malignant"] != "" for r in rows if Path(r["file"]).name != CORRUPT)
    for rec in _journal_intents(out):
        assert rec["top_dx"] is None and rec["top_dx_p"] is None
        if rec["p_malignant"] is not None:
            assert rec["decision"] == ("benign" if rec["p_malignant"] < rec["threshold"] else "review")
    dry = json.loads(_run(["sort", str(images), "--out", str(tmp_path / "dry"), "--model", str(binary_bundle),
                           "--backend", "onnxruntime", "--dry-run", "--json"]).output)
    assert all(d["top_dx"] is None and d["top_dx_p"] is None for d in dry["decisions"])
    text = _run(["sort", str(images), "--out", str(tmp_path / "dry"), "--model", str(binary_bundle),
                 "--backend", "onnxruntime", "--dry-run"]).output
    assert "top dx" not in text


def test_rerun_into_an_output_written_with_the_old_header(dx_bundle, images, tmp_path):
    """An OUT folder from a dermsort before top_dx: its results.csv keeps its columns in place."""
    out = tmp_path / "out"
    first = sorted(images.iterdir())[:5]
    later = tmp_path / "later"
    later.mkdir()
    for p in sorted(images.iterdir())[5:]:
        shutil.move(str(p), later / p.name)
    _run(["sort", str(images), "--out", str(out), "--model", str(dx_bundle), "--backend", "onnxruntime"])
    # what the older dermsort left: journal records without the new keys, results.csv with the old header
    journal = out / ".dermsort" / "journal.jsonl"
    recs = [json.loads(l) for l in journal.read_text().splitlines()]
    for r in recs:
        r.pop("top_dx", None)
        r.pop("top_dx_p", None)
    journal.write_text("".join(json.dumps(r) + "\n" for r in recs))
    _, rows = _rows(out)
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=OLD_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    old_positions = {r[0]: r for r in csv.reader(open(out / "results.csv", newline=""))}

    for p in later.iterdir():
        shutil.move(str(p), images / p.name)
    _run(["sort", str(images), "--out", str(out), "--model", str(dx_bundle), "--backend", "onnxruntime"])
    table = list(csv.reader(open(out / "results.csv", newline="")))
    assert table[0] == OLD_FIELDS + [f for f in RESULT_FIELDS if f not in OLD_FIELDS]
    assert all(len(r) == len(table[0]) for r in table)  # no ragged rows
    assert len(table) == 1 + 11
    for r in table[1:]:
        if r[0] in old_positions:  # rows of the old run: same values in the same positions, new cells empty
            new = len(OLD_FIELDS)
            assert r[:new] == old_positions[r[0]] and r[new:new + 2] == ["", ""]  # no top_dx for them
        elif Path(r[0]).name != CORRUPT:
            i = table[0].index("top_dx")
            assert r[i] in DX_CLASSES and 0 < float(r[i + 1]) <= 1
    assert {f.name for f in first} <= {Path(r[0]).name for r in table[1:]}


def test_existing_column_order_is_kept_and_a_damaged_header_is_replaced(dx_bundle, images, tmp_path):
    out = tmp_path / "out"
    _run(["sort", str(images), "--out", str(out), "--model", str(dx_bundle), "--backend", "onnxruntime"])
    _, rows = _rows(out)
    order = ["decision", "file", "p_malignant", "top_dx", "dest"]
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=order, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    extra = images / "extra.jpg"
    shutil.copyfile(HAM_IMAGES[20], extra)
    _run(["sort", str(images), "--out", str(out), "--model", str(dx_bundle), "--backend", "onnxruntime"])
    header, new_rows = _rows(out)
    assert header == order + [f for f in RESULT_FIELDS if f not in order]
    assert len(new_rows) == 12 and any(r["file"] == str(extra.resolve()) and r["top_dx"] in DX_CLASSES
                                       for r in new_rows)

    (out / "results.csv").write_bytes(b"\x00\xffnot a header,,\n1,2\n")
    shutil.copyfile(HAM_IMAGES[21], images / "extra2.jpg")
    _run(["sort", str(images), "--out", str(out), "--model", str(dx_bundle), "--backend", "onnxruntime"])
    header, new_rows = _rows(out)
    assert header == RESULT_FIELDS and len(new_rows) == 13


def test_results_csv_neutralises_formula_text_but_not_numbers():
    state = JournalState()
    rec = Intent(id="a", file="=HYPERLINK(\"http://x\")", dest="review/@SUM(A1).jpg", decision="review",
                 p_malignant=-0.0, threshold=0.5, top_dx="+cmd", top_dx_p=0.5, reason="-bad", model_id="m", mode="copy")
    state.intents["a"] = rec
    state.done.add("a")
    row = next(csv.DictReader(results_csv_text(state).splitlines()))
    assert row["file"] == "'=HYPERLINK(\"http://x\")" and row["dest"] == "review/@SUM(A1).jpg"
    assert row["top_dx"] == "'+cmd" and row["reason"] == "'-bad"
    assert row["p_malignant"] == "-0.0" and row["top_dx_p"] == "0.5"


def test_top_diagnoses_helper():
    probs = np.array([[0.1, 0.05, 0.05, 0.05, 0.6, 0.1, 0.05], [np.nan] * 7])
    assert top_diagnoses(probs, DX_CLASSES) == [("mel", 0.6), (None, None)]
    assert top_diagnoses(np.array([[0.3, 0.7]]), ["benign", "malignant"]) == [(None, None)]
    assert top_diagnoses(np.ones((2, 3)) / 3, DX_CLASSES) == [(None, None)] * 2  # shape does not match the classes
    assert validation_lines({}, {}, {}) == [] and validation_lines(None, None, None) == []


def test_info_shows_the_diagnosis_head_and_validation_breakdown(dx_bundle, binary_bundle):
    data = json.loads(_run(["info", "--model", str(dx_bundle), "--json"]).output)
    assert data["classes"] == DX_CLASSES
    head = data["head"]
    assert head["diagnosis_head"] is True and head["malignant_classes"] == DX_MALIGNANT
    assert {c["code"]: c["malignant"] for c in head["classes"]} == {c: c in DX_MALIGNANT for c in DX_CLASSES}
    assert {c["code"]: c["name"] for c in head["classes"]} == DIAGNOSIS_NAMES
    val = data["metadata"]["validation"]
    assert val["per_dataset"]["ph2"]["n_images"] == 10 and val["per_diagnosis"]["melanoma"]["missed"] == 1
    assert val["threshold_basis"]["binding"] == "ph2"
    text = _run(["info", "--model", str(dx_bundle)]).output
    assert "head         diagnosis (7 classes)" in text
    assert "melanoma" in text and "basal cell carcinoma" in text and "mel + bcc + akiec" in text
    assert "binding: ph2" in text and "per dataset" in text and "per diagnosis" in text
    assert "ham10000-sample: n=30 (9 malignant), sens 100.0% [70.0%, 100.0%]" in text
    assert "melanoma: sens 85.7%" in text and "scc/ak: sens n/a" in text

    data = json.loads(_run(["info", "--model", str(binary_bundle), "--json"]).output)
    assert data["classes"] == ["benign", "malignant"] and data["head"]["diagnosis_head"] is False
    text = _run(["info", "--model", str(binary_bundle)]).output
    assert "head         binary (benign / malignant)" in text
    assert "per dataset" not in text and "per diagnosis" not in text and "basis" not in text
