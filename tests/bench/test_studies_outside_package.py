"""One-off studies live in studies/, outside the installed package, and still run from a checkout."""

import configparser
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STUDIES = ["pipeline", "wholeproc", "auto_overhead", "report_overhead", "devmodel", "quant_study", "gate_cost"]


def test_setup_cfg_installs_no_study():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    packages = cfg["options"]["packages"].split()
    folders = [line.split("=")[1].strip() for line in cfg["options"]["package_dir"].strip().splitlines()]
    assert not any("studies" in p for p in packages + folders)
    for name in STUDIES:
        assert (REPO / "studies" / f"{name}.py").is_file()
        for part in ("bench", "export"):
            assert not (REPO / part / f"{name}.py").exists()
            with pytest.raises(ImportError):
                importlib.import_module(f"dermsort.{part}.{name}")


@pytest.mark.parametrize("name", STUDIES)
def test_each_study_runs_from_the_checkout_root(name):
    res = subprocess.run([sys.executable, "-m", f"studies.{name}", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert f"python -m studies.{name}" in res.stdout
