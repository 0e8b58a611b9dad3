"""Windows under Wine (issue 23), opt-in: DERMSORT_WINE_CHECK=1 runs scripts/wine-check.sh (~10 min; downloads
the Windows CPython and wheels from PyPI the first time). It sorts the same real images on Linux and under
Wine (identical decisions) and runs scripts/os_scenarios.py there (clash, writer, kills, watch)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_windows_under_wine_decides_like_linux_and_loses_nothing(tmp_path):
    if os.environ.get("DERMSORT_WINE_CHECK") != "1":
        pytest.skip("opt-in: DERMSORT_WINE_CHECK=1 (runs scripts/wine-check.sh, ~10 min)")
    if shutil.which("wine") is None:
        pytest.skip("wine not installed (Debian: apt-get install -y wine wine64)")
    report = tmp_path / "wine-check.txt"
    done = subprocess.run([str(REPO / "scripts" / "wine-check.sh")], capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "WINE_CHECK_REPORT": str(report)})
    if done.stdout.startswith("SKIP:"):
        pytest.skip(done.stdout.strip())
    text = report.read_text() if report.exists() else done.stdout
    assert done.returncode == 0, text[-3000:] + done.stderr[-2000:]
    assert "decisions identical to Linux" in text and '"failed": []' in text
