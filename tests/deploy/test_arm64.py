"""The Raspberry Pi path on a real arm64 Debian 12 userland (qemu user-mode emulation): opt-in.

deploy/raspi/check-arm64.sh debootstraps (once) an arm64 bookworm root, runs deploy/raspi/install.sh
in it as root, runs the service's command, and compares every decision and p(malignant) with this
x86 machine. It needs root, qemu-user-static + binfmt-support + debootstrap, the package registries
(Debian's, PyPI) and 15-40 minutes of emulated CPU, so it runs only with DERMSORT_ARM64_CHECK=1; the
last run's report is committed as docs/deploy/arm64-check.txt. Its skip path (no binfmt_misc) is
tested in tests/deploy/test_deploy.py on every run.
"""

from __future__ import annotations

import os
import sys
import shutil
import subprocess
from pathlib import Path

import pytest

from test_deploy import DEPLOY, REPO

pytestmark = [pytest.mark.slow, pytest.mark.arm64]

CHECK = DEPLOY / "raspi" / "check-arm64.sh"
EXIT_SKIP = 77


def test_raspi_install_and_sort_on_emulated_arm64_match_x86(tmp_path: Path) -> None:
    if os.environ.get("DERMSORT_ARM64_CHECK") != "1":
        pytest.skip("opt-in (DERMSORT_ARM64_CHECK=1): needs root, qemu-user-static, binfmt-support, debootstrap, "
                    "the package registries and 15-40 min of emulated CPU; last report: docs/deploy/arm64-check.txt")
    dermsort = shutil.which("dermsort") or str(Path(sys.executable).parent / "dermsort")
    report = tmp_path / "arm64-check.txt"
    cache = os.environ.get("DERMSORT_ARM64_CACHE", "/var/cache/dermsort-arm64")
    result = subprocess.run([str(CHECK), "--root", cache, "--x86-dermsort", dermsort, "--out", str(report)],
                            capture_output=True, text=True, cwd=REPO, timeout=3 * 3600)
    if result.returncode == EXIT_SKIP:
        pytest.skip(result.stderr.strip().splitlines()[-1])
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    text = report.read_text()
    assert "RESULT (onnxruntime fp32): 24/24 decisions identical" in text and "OVERALL: PASS" in text
    assert "onnxruntime 1." in text and "aarch64" in text
