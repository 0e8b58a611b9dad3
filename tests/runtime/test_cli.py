"""The CLI end to end: click's CliRunner in-process and the installed console script as a subprocess."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from dermsort.cli import cli

JOURNAL_FIELDS = {"file", "sha256", "decision", "p_malignant", "threshold", "backend", "model_id", "time", "reason"}


def _run(args: list[str]):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_sort_copies_every_image_once_and_journals_it(tiny_bundle, sample_images, tmp_path, backend):
    out = tmp_path / "out"
    before = _tree(sample_images)
    res = _run(["sort", str(sample_images), "--out", str(out), "--model", str(tiny_bundle), "--backend", backend, "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["sorted"] == len(before) == summary["benign"] + summary["review"]
    assert summary["backend"]["backend"] == backend
    assert _tree(sample_images) == before  # copy mode leaves the input alone
    placed = {**_tree(out / "benign"), **_tree(out / "review")}
    assert sorted(placed.values()) == sorted(before.values())
    records = [json.loads(l) for l in (out / ".dermsort" / "journal.jsonl").read_text().splitlines()]
    intents = [r for r in records if r["event"] == "intent"]
    assert len(intents) == len(before) and JOURNAL_FIELDS <= set(intents[0])
    for rec in intents:
        assert (rec["decision"] == "benign") == (rec["p_malignant"] < rec["threshold"])
        assert hashlib.sha256((out / rec["dest"]).read_bytes()).hexdigest() == rec["sha256"]
    rows = list(csv.DictReader(open(out / "results.csv", newline="")))
    assert len(rows) == len(before) and JOURNAL_FIELDS <= set(rows[0])


def test_backends_make_the_same_decisions(tiny_bundle, sample_images, tmp_path):
    decisions = {}
    for backend in ("onnxruntime", "openvino"):
        res = _run(["sort", str(sample_images), "--out", str(tmp_path / backend), "--model", str(tiny_bundle),
                    "--backend", backend, "--dry-run", "--json"])
        decisions[backend] = {d["file"]: d["decision"] for d in json.loads(res.output)["decisions"]}
    assert decisions["onnxruntime"] == decisions["openvino"]


def test_dry_run_writes_nothing_and_threshold_override(tiny_bundle, sample_images, tmp_path):
    out = tmp_path / "out"
    res = _run(["sort", str(sample_images), "--out", str(out), "--model", str(tiny_bundle), "--dry-run",
                "--threshold", "1.0", "--json"])
    data = json.loads(res.stdout)  # stdout is pure JSON; the override warning goes to stderr
    assert not out.exists()
    assert data["dry_run"] and data["threshold"] == 1.0 and data["benign"] == data["sorted"]
    res = _run(["sort", str(sample_images), "--out", str(out), "--model", str(tiny_bundle), "--dry-run",
                "--threshold", "0.0001"])
    assert "0 benign" in res.output


def test_move_recursive_and_default_out(tiny_bundle, sample_images):
    sub = sample_images / "patient 2"
    sub.mkdir()
    first = sorted(sample_images.glob("*.jpg"))[0]
    (sub / first.name).write_bytes(first.read_bytes())  # same name in a subfolder
    before = sorted(_tree(sample_images).values())
    res = _run(["sort", str(sample_images), "--move", "--recursive", "--model", str(tiny_bundle)])
    assert res.exit_code == 0, res.output
    out = sample_images.parent / f"{sample_images.name}-sorted"
    assert not any(p.is_file() for p in sample_images.rglob("*"))
    placed = {**_tree(out / "benign"), **_tree(out / "review")}
    assert sorted(placed.values()) == before and len(placed) == len(before)
    assert any("__1" in name for name in placed)  # the clash got a suffix, nothing overwritten
    assert "work reduction" in res.output and "files/s" in res.output


def test_info_shows_metadata_and_backends(tiny_bundle):
    res = _run(["info", "--model", str(tiny_bundle), "--json"])
    data = json.loads(res.output)
    assert data["metadata"]["model_id"] == "tiny-test-cnn"
    assert {"onnxruntime", "openvino", "tensorrt"} <= set(data["backends"])
    assert data["backends"]["onnxruntime"]["available"] is True
    assert all(a["checksum"] == "ok" for a in data["artifacts"])
    text = _run(["info", "--model", str(tiny_bundle)]).output
    assert "threshold" in text and "DEVELOPMENT" in text and "tensorrt" in text


def _dermsort(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dermsort.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def test_subprocess_sort_and_one_line_errors(tiny_bundle, sample_images, tmp_path):
    res = _dermsort("sort", str(sample_images), "--out", str(tmp_path / "o"), "--model", str(tiny_bundle), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["sorted"] == len(list(sample_images.iterdir()))
    cases = {
        "input folder not found": ["sort", str(tmp_path / "missing"), "--model", str(tiny_bundle)],
        "unknown backend": ["sort", str(sample_images), "--model", str(tiny_bundle), "--backend", "quantum"],
        "inside the input folder": ["sort", str(sample_images), "--out", str(sample_images / "o"),
                                    "--model", str(tiny_bundle)],
        "model not found": ["sort", str(sample_images), "--model", str(tmp_path / "nomodel")],
    }
    for needle, args in cases.items():
        res = _dermsort(*args)
        assert res.returncode != 0, needle
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in res.stderr, res.stderr


def test_missing_extra_names_the_pip_command(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *a, **kw):
        if name.startswith("dermsort.bench"):
            raise ImportError("No module named 'psutil'", name="psutil")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.setattr("importlib.import_module", lambda n: fake_import(n))
    res = CliRunner().invoke(cli, ["bench", "x"])
    assert res.exit_code != 0 and 'pip install "dermsort[bench]"' in res.output
