"""One truth on every surface (issue 27, section 4): the terminal summary, --json, report.html, results.csv
and `info` give the same counts and the figures of the artifact that ran; stops and usage errors are
deterministic and said once."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dermsort.cli import main
from dermsort.runtime import engine
from dermsort.runtime.bundle import DEFAULT_BUNDLE, load_bundle
from fault_harness import copy_corpus, small_real_images, tree

REPO = Path(__file__).resolve().parents[2]


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([*argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _page_counts(out: Path) -> dict[str, str]:
    text = (out / "report.html").read_text()
    return dict(re.findall(r'<li id="([\w-]+)"><b>([\d.%]+)</b>', text))


def _mixed_folder(folder: Path) -> None:
    """Images, an input problem that is an image (truncated JPEG) and files that are not images."""
    copy_corpus(folder, 6)
    first = small_real_images(1, 0)[0].read_bytes()
    (folder / "truncated.jpg").write_bytes(first[: len(first) // 3])
    (folder / "notes.txt").write_text("patient called back\n")
    (folder / "empty.jpg").write_bytes(b"")


def test_terminal_json_page_and_csv_give_the_same_counts(tiny_bundle, tmp_path, capsys):
    inp = tmp_path / "in"
    _mixed_folder(inp)
    common = ["--model", str(tiny_bundle), "--backend", "onnxruntime"]
    rc, text, err = _run(capsys, "sort", str(inp), "--out", str(tmp_path / "o1"), *common)
    assert rc == 0, err
    rc, js, err = _run(capsys, "sort", str(inp), "--out", str(tmp_path / "o2"), "--json", *common)
    assert rc == 0, err
    data = json.loads(js)
    m = re.search(r"sorted (\d+) image\(s\): (\d+) benign, (\d+) review(?:, (\d+) not an image \(in review/\))? "
                  r"\(work reduction ([\d.]+)%\)", text)
    assert m, text
    terminal = {"images": int(m[1]), "benign": int(m[2]), "review": int(m[3]), "not_images": int(m[4] or 0),
                "work_reduction": m[5] + "%"}
    as_json = {k: data[k] for k in ("images", "benign", "review", "not_images")}
    as_json["work_reduction"] = f"{data['work_reduction']:.1%}"
    assert terminal == as_json
    assert terminal["not_images"] == 2 and terminal["images"] == 7  # notes.txt + empty.jpg; 6 images + truncated
    for out in (tmp_path / "o1", tmp_path / "o2"):
        page = _page_counts(out)
        assert {"images": int(page["n-images"]), "benign": int(page["n-benign"]), "review": int(page["n-review"]),
                "not_images": int(page["n-not-images"]), "work_reduction": page["work-reduction"]} == terminal
        assert int(page["n-sorted"]) == data["sorted"] == terminal["images"] + terminal["not_images"]
        with open(out / "results.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == data["sorted"] == len(tree(out / "benign")) + len(tree(out / "review"))
        assert sum(r["decision"] == "benign" for r in rows) == terminal["benign"]
        assert sum(r["decision"] == "review" for r in rows) == terminal["review"] + terminal["not_images"]


def test_report_page_counts_superseded_copies_apart_and_says_so(tiny_bundle, tmp_path, capsys):
    inp, out = tmp_path / "in", tmp_path / "out"
    copy_corpus(inp, 3)
    full = small_real_images(5, 0)[4].read_bytes()
    photo = inp / "photo.jpg"
    photo.write_bytes(full[: len(full) // 3])  # a writer that closed the file half-way
    common = ["--out", str(out), "--model", str(tiny_bundle), "--backend", "onnxruntime"]
    rc, _, err = _run(capsys, "sort", str(inp), *common)
    assert rc == 0, err
    photo.write_bytes(full)  # ... and re-opened it to finish
    rc, _, err = _run(capsys, "sort", str(inp), *common)
    assert rc == 0, err
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sum(r["status"].startswith("superseded") for r in rows) == 1
    page = _page_counts(out)
    text = (out / "report.html").read_text()
    assert page["n-superseded"] == "1" and 'id="superseded"' in text and "Superseded" in text
    assert page["n-problems"] == "0", "a superseded partial copy is not an input problem any more"
    assert int(page["n-sorted"]) == len(rows) - 1 == 4


def _default_bundle_rows(out: Path, artifact: str, threshold: float, model_id: str) -> None:
    (out / "review").mkdir(parents=True)
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["file", "dest", "sha256", "decision", "p_malignant", "threshold", "backend",
                                           "artifact", "model_id", "time", "reason", "status"])
        w.writeheader()
        w.writerow({"file": "/in/a.jpg", "dest": "review/a.jpg", "sha256": "0" * 64, "decision": "review",
                    "p_malignant": 0.2, "threshold": threshold, "backend": "openvino", "artifact": artifact,
                    "model_id": model_id, "time": "2026-01-01T00:00:00", "reason": f"p_malignant 0.2000 >= threshold "
                    f"{threshold:.4f}", "status": ""})


def test_page_and_info_show_the_figures_of_the_artifact_that_ran(tmp_path, capsys):
    from dermsort.runtime.report_page import build_report

    bundle, _ = load_bundle(DEFAULT_BUNDLE)
    # a derived artifact with its own recalibrated threshold (v2: openvino-int8; v3: openvino-bf16)
    int8 = next(a for a in bundle.artifacts if a.path != bundle.reference and a.accepted
                and abs(a.threshold - bundle.metadata.threshold) > 1e-4 and a.parity.get("sensitivity") is not None)
    v = bundle.metadata.validation
    assert abs(int8.threshold - bundle.metadata.threshold) > 1e-4 and int8.parity.get("sensitivity") is not None
    out = tmp_path / "out"
    _default_bundle_rows(out, int8.name, int8.threshold, bundle.model_id)
    text = build_report(out, bundle).read_text()
    assert f"{int8.parity['specificity']:.1%}" in text and "parity gate" in text
    assert f"{v.specificity:.1%}" not in text, "the FP32 reference's specificity beside the INT8 threshold"
    # info: its headline threshold is the one `sort --backend auto` runs (here: a profile ranking INT8 first)
    engine.save_profile(bundle, [{"backend": int8.backend, "artifact": int8.name, "images_per_s": 100.0},
                                 {"backend": "onnxruntime", "artifact": "onnx-fp32", "images_per_s": 10.0}],
                        source="bench")
    rc, info_text, err = _run(capsys, "info")
    assert rc == 0, err
    headline = next(line for line in info_text.splitlines() if line.startswith("threshold"))
    assert f"{int8.threshold:.4f}" in headline and int8.name in headline
    figures = info_text.splitlines()[info_text.splitlines().index(headline) + 1]
    assert f"{int8.parity['specificity']:.3f}" in figures
    rc, info_json, err = _run(capsys, "info", "--json")
    auto = json.loads(info_json)["auto"]
    # the order open_backend(bundle, "auto") loads in (without loading: that is sort's own business)
    usable = [(b, a) for b, a in engine.candidates(bundle) if engine.backend_installed(b)[0]]
    ranked, _ = engine._rank(bundle, usable, None, probe=False)
    assert (auto["artifact"], auto["threshold"]) == (ranked[0][1].name, ranked[0][1].threshold)


# ------------------------------------------------------------------------------------ watch: one exit status
def _watch(inp: Path, out: Path, bundle: Path, fault: str | None = None) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("DERMSORT_FAULT_AT", None)
    if fault:
        env["DERMSORT_FAULT_AT"] = fault
    return subprocess.Popen([sys.executable, "-m", "dermsort.cli", "watch", str(inp), "--out", str(out), "--model",
                             str(bundle), "--backend", "onnxruntime", "--settle", "0", "--interval", "0.2"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _loading_the_model(pid: int) -> bool:
    try:
        return "onnxruntime" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.parametrize("how,expected", [("link:1:TERM", 0), ("intent:1:TERM", 0), ("recovered:1:TERM", 0),
                                          ("after-start:TERM", 0), ("model-load:TERM", 0), ("link:1:INT", 130),
                                          ("after-start:INT", 130)])
def test_watch_exit_status_is_0_for_sigterm_and_130_for_ctrl_c_whenever_it_comes(tiny_bundle, tmp_path, how,
                                                                                 expected):
    inp, out = tmp_path / "in", tmp_path / "out"
    copy_corpus(inp, 4)
    if how.startswith("recovered"):  # recovery runs when there is a journal
        assert main(["sort", str(inp), "--out", str(out), "--model", str(tiny_bundle), "--backend",
                     "onnxruntime"]) == 0
        (inp / "new.jpg").write_bytes(small_real_images(6, 0)[5].read_bytes())
    proc = _watch(inp, out, tiny_bundle, None if how.startswith(("after-start", "model-load")) else how)
    if how.startswith("model-load"):  # while the backend loads, before watch has its output folder
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _loading_the_model(proc.pid) and proc.poll() is None:
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
    if how.startswith("after-start"):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (out / "results.csv").exists():
            time.sleep(0.05)
        proc.send_signal(getattr(signal, f"SIG{how.split(':')[1]}"))
    try:
        _, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == expected, err[-1500:]
    assert "Traceback" not in err


def test_readme_unit_and_arm64_check_agree_on_the_watch_exit_status():
    readme = (REPO / "README.md").read_text()
    assert re.search(r"`dermsort watch`[^.]*SIGTERM[^.]*exits `0`", readme), "README: watch + SIGTERM -> 0"
    assert "Ctrl-C" in readme and "`130`" in readme
    unit = (REPO / "deploy" / "common.sh").read_text()
    assert "KillSignal=SIGTERM" in unit and "exits 0 on SIGTERM" in unit
    check = (REPO / "deploy" / "raspi" / "check-arm64.sh").read_text()
    assert "watch_rc == 0" in check


# ------------------------------------------------------------------------------------ said once, said at all
def test_keep_tree_without_recursive_is_a_one_line_usage_error(tiny_bundle, tmp_path):
    inp = tmp_path / "in"
    copy_corpus(inp, 1)
    res = subprocess.run([sys.executable, "-m", "dermsort.cli", "sort", str(inp), "--out", str(tmp_path / "o"),
                          "--model", str(tiny_bundle), "--keep-tree"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == ["dermsort: error: --keep-tree needs --recursive (it mirrors the "
                                               "subfolders that --recursive sorts)"]
    assert not (tmp_path / "o").exists()


def test_damaged_journal_warning_is_printed_once(tiny_bundle, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    copy_corpus(inp, 3)
    cmd = [sys.executable, "-m", "dermsort.cli", "sort", str(inp), "--out", str(out), "--model", str(tiny_bundle),
           "--backend", "onnxruntime"]
    assert subprocess.run(cmd, capture_output=True, timeout=120).returncode == 0
    journal = out / ".dermsort" / "journal.jsonl"
    journal.write_bytes(journal.read_bytes() + b"garbage that is not a record\n")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert len([line for line in res.stderr.splitlines() if "damaged" in line]) == 1, res.stderr


def test_immutable_output_says_the_page_is_stale(tiny_bundle, tmp_path):
    if shutil.which("chattr") is None or os.geteuid() != 0:
        pytest.skip("chattr +i needs chattr(1) and root")
    inp, out = tmp_path / "in", tmp_path / "out"
    copy_corpus(inp, 2)
    cmd = [sys.executable, "-m", "dermsort.cli", "sort", str(inp), "--out", str(out), "--model", str(tiny_bundle),
           "--backend", "onnxruntime"]
    assert subprocess.run(cmd, capture_output=True, timeout=120).returncode == 0
    shutil.copyfile(small_real_images(4, 0)[3], inp / "new.jpg")
    if subprocess.run(["chattr", "+i", str(out)], capture_output=True).returncode != 0:
        pytest.skip("this file system does not support chattr +i")
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    finally:
        subprocess.run(["chattr", "-i", str(out)], capture_output=True)
    assert res.returncode != 0
    assert "review page" in res.stderr and "stale" in res.stderr, res.stderr
    assert "review page: " not in res.stdout, "the summary presents a stale page as the result"
    assert len([line for line in res.stderr.splitlines() if "results.csv" in line]) == 2  # the page line + the error


# ------------------------------------------------------------------------------------ bench needs
def test_bench_checks_what_it_needs_before_measuring(tiny_bundle, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from dermsort.bench import report as report_mod
    from dermsort.cli import cli

    monkeypatch.setattr(report_mod, "missing_modules", lambda: (["psutil"], []))
    started = time.monotonic()
    res = CliRunner().invoke(cli, ["bench", str(tmp_path / "no-such-bundle"), "--data", "nowhere"])
    assert res.exit_code != 0 and "psutil" in str(res.exception or res.output)
    assert time.monotonic() - started < 5


def test_bench_without_matplotlib_writes_every_report_and_says_why_the_plot_is_missing(tiny_bundle, tmp_path,
                                                                                      monkeypatch):
    from click.testing import CliRunner

    from conftest import DATA
    from dermsort.cli import cli

    for name in ("matplotlib", "matplotlib.pyplot"):
        monkeypatch.setitem(sys.modules, name, None)  # import matplotlib -> ImportError, find_spec -> None
    out = tmp_path / "r"
    res = CliRunner().invoke(cli, ["bench", str(tiny_bundle), "--data", str(DATA / "ph2"), "--max-images", "4",
                                   "--backends", "onnxruntime", "--no-profile", "--no-dermosort", "--out", str(out),
                                   "--reps", "3", "--warmup", "1", "--e2e-reps", "1", "--cold-reps", "1"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    for name in ("report.md", "report.json", "report.csv", "decisions.csv"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert not (out / "latency_vs_sensitivity.png").exists()
    assert "matplotlib" in res.output and "plot" in res.output
    assert "matplotlib" in (out / "report.md").read_text()
    assert "matplotlib" in json.loads((out / "report.json").read_text())["plot_missing"]
