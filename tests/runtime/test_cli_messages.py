"""What `dermsort sort` tells a person (or a log) beyond the decisions: an empty folder, progress
without a terminal."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from dermsort.cli import cli
from dermsort.runtime.cli import LineProgress


def test_empty_folder_says_no_images_found(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    res = CliRunner().invoke(cli, ["sort", str(empty), "--out", str(tmp_path / "out"), "--backend", "onnxruntime"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert f"no images found in {empty}" in res.output
    assert "work reduction" not in res.output and "sorted 0" not in res.output


def test_progress_lines_without_a_terminal(capsys):
    now = [0.0]
    progress = LineProgress(300, every_s=10.0, every_n=100, clock=lambda: now[0])
    for _ in range(9):  # 9 images in 9 s: nothing yet
        now[0] += 1.0
        progress.update(1)
    assert capsys.readouterr().err == ""
    now[0] += 1.5
    progress.update(1)  # 10.5 s since the start
    err = capsys.readouterr().err.splitlines()
    assert err == ["sorting: 10/300 images (3%), 1.0 images/s"]
    progress.update(100)  # 100 more images at once: a line even within 10 s
    assert capsys.readouterr().err.startswith("sorting: 110/300 images")


def test_sort_prints_progress_lines_when_stderr_is_not_a_terminal(sample_images, tmp_path, monkeypatch):
    # a subprocess with stderr in a pipe (like a service's log); every image gets a line here
    code = ("import sys, dermsort.runtime.cli as c; c.LineProgress.__init__.__defaults__ = (0.0, 1, "
            "c.time.monotonic); from dermsort.cli import main; sys.exit(main(sys.argv[1:]))")
    res = subprocess.run([sys.executable, "-c", code, "sort", str(sample_images), "--out", str(tmp_path / "o"),
                          "--backend", "onnxruntime", "--batch-size", "4"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = [l for l in res.stderr.splitlines() if l.startswith("sorting: ")]
    n = len(list(sample_images.iterdir()))
    assert lines and lines[-1].startswith(f"sorting: {n}/{n} images (100%)"), res.stderr


def test_tensorrt_without_engines_points_to_export_engines(tmp_path):
    """The bundled model has no TensorRT engines (they are built on the target GPU): the error says how."""
    inp = tmp_path / "in"
    inp.mkdir()
    res = subprocess.run([sys.executable, "-m", "dermsort.cli", "sort", str(inp), "--backend", "tensorrt"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "dermsort export-engines" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_info_warns_when_both_onnxruntime_builds_are_installed(monkeypatch):
    """onnxruntime and onnxruntime-gpu share one import name: `info` says so (the installers refuse it)."""
    import json
    from importlib import metadata

    real = metadata.version

    def version(dist):
        if dist == "onnxruntime-gpu":  # as if NVIDIA's wheel had been installed beside the CPU one
            return "1.31.1"
        return real(dist)

    runner = CliRunner()
    plain = json.loads(runner.invoke(cli, ["info", "--json"], catch_exceptions=False).stdout)
    assert "WARNING" not in plain["backends"]["onnxruntime"]["detail"]
    monkeypatch.setattr(metadata, "version", version)
    both = json.loads(runner.invoke(cli, ["info", "--json"], catch_exceptions=False).stdout)
    detail = both["backends"]["onnxruntime"]["detail"]
    assert "WARNING: both onnxruntime" in detail and "onnxruntime-gpu 1.31.1" in detail
