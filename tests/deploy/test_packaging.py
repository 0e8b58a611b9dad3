"""Exactly one ONNX Runtime per install: [cpu] brings onnxruntime, [gpu] onnxruntime-gpu, never both.

Real installs into fresh venvs (no system site packages), OFFLINE from a local wheelhouse
(``scripts/fill-wheelhouse.sh`` fills it; without the wheels these tests skip and say which are
missing). The CPU path is the Raspberry Pi installer itself, run for real against a fake root; the
GPU path is the Jetson installer's pip command (its ``tensorrt`` extra needs JetPack's TensorRT,
which is not here, so it is left out: the ONNX Runtime part is what can conflict).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_deploy import RASPI_INSTALL, REPO, make_raspi_root, script_env

pytestmark = pytest.mark.slow

WHEELHOUSE = Path(os.environ.get("DERMSORT_WHEELHOUSE", Path.home() / ".cache" / "dermsort" / "wheelhouse"))
NEEDED = ("onnxruntime-", "onnxruntime_gpu-", "numpy-", "pillow-", "click-", "setuptools-", "wheel-")
# what deploy/common.sh's ds_pip_check reads: the ONNX Runtime distributions in a venv
ORT_DISTS = ('import importlib.metadata as m; print(" ".join(sorted({(d.metadata["Name"] or "").lower() '
             'for d in m.distributions()} & {"onnxruntime", "onnxruntime-gpu"})))')


def _wheelhouse() -> Path:
    missing = [n.rstrip("-_") for n in NEEDED if not list(WHEELHOUSE.glob(f"{n}*.whl"))]
    if missing:
        pytest.skip(f"offline install test: no wheels for {', '.join(missing)} in {WHEELHOUSE} "
                    "(fill it once with scripts/fill-wheelhouse.sh, or set DERMSORT_WHEELHOUSE)")
    return WHEELHOUSE


@pytest.fixture(scope="module")
def dermsort_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wheelhouse = _wheelhouse()
    out = tmp_path_factory.mktemp("wheel")
    # build isolation with setuptools and wheel from the wheelhouse: offline, like everything here
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(REPO)],
                   check=True, timeout=300, env=_offline_env(wheelhouse))
    return next(out.glob("dermsort-*.whl"))


def _offline_env(*links: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "DERMSORT_"))}
    env.update(PIP_NO_INDEX="1", PIP_FIND_LINKS=" ".join(map(str, links)), PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def _ort_in(venv: Path) -> str:
    return subprocess.run([str(venv / "bin/python"), "-c", ORT_DISTS], capture_output=True, text=True,
                          check=True).stdout.strip()


def _pip_check(venv: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin/python"), "-m", "pip", "check"], capture_output=True, text=True,
                          env=_offline_env())


def _ds_pip_check(venv: Path) -> subprocess.CompletedProcess[str]:
    """deploy/common.sh's check, as both installers run it after pip install."""
    script = f'. "{REPO}/deploy/common.sh"; DS_PROG=test; DS_VENV="{venv}"; ds_pip_check'
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True)


def test_cpu_path_the_raspi_installer_brings_onnxruntime_only(tmp_path: Path, dermsort_wheel: Path) -> None:
    root = make_raspi_root(tmp_path / "root")
    env = script_env(DERMSORT_SKIP_SYSTEMCTL="1", DERMSORT_SKIP_APT="1",
                     **{k: v for k, v in _offline_env(_wheelhouse(), dermsort_wheel.parent).items()
                        if k.startswith("PIP_")})
    result = subprocess.run([str(RASPI_INSTALL), "--root", str(root), "--input", "/srv/camera",
                             "--source", str(dermsort_wheel)], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    venv = root / "opt/dermsort/venv"
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    assert f"'{dermsort_wheel}[cpu]'" in result.stdout
    assert "ONNX Runtime in the venv: onnxruntime\n" in result.stdout
    assert "No broken requirements found." in result.stdout
    assert _ort_in(venv) == "onnxruntime"
    assert _pip_check(venv).returncode == 0
    info = subprocess.run([str(venv / "bin/dermsort"), "info"], capture_output=True, text=True, timeout=120)
    assert info.returncode == 0 and "onnxruntime" in info.stdout, info.stdout + info.stderr


def test_gpu_path_brings_onnxruntime_gpu_only_and_both_builds_are_refused(tmp_path: Path,
                                                                         dermsort_wheel: Path) -> None:
    wheelhouse = _wheelhouse()
    gpu_wheel = sorted(wheelhouse.glob("onnxruntime_gpu-*.whl"))[-1]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # the Jetson installer's command: dermsort with [gpu] AND the downloaded wheel named
    install = subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "--quiet",
                              f"{dermsort_wheel}[gpu]", str(gpu_wheel)], capture_output=True, text=True,
                             env=_offline_env(wheelhouse, dermsort_wheel.parent), timeout=600)
    assert install.returncode == 0, install.stdout + install.stderr
    assert _ort_in(venv) == "onnxruntime-gpu"
    check = _pip_check(venv)
    assert check.returncode == 0, check.stdout + check.stderr
    ok = _ds_pip_check(venv)
    assert ok.returncode == 0 and "ONNX Runtime in the venv: onnxruntime-gpu" in ok.stdout, ok.stdout + ok.stderr
    imported = subprocess.run([str(venv / "bin/python"), "-c", "import onnxruntime as o; print(o.get_device())"],
                              capture_output=True, text=True, timeout=120)
    assert imported.returncode == 0 and imported.stdout.strip() == "GPU", imported.stderr

    # the old failure: the CPU build installed beside it. pip check does not see the clash (both
    # declare no conflict); the installers' check does, in one line
    both = subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "--quiet", "onnxruntime"],
                          capture_output=True, text=True, env=_offline_env(wheelhouse), timeout=600)
    assert both.returncode == 0, both.stderr
    assert _ort_in(venv) == "onnxruntime onnxruntime-gpu"
    assert _pip_check(venv).returncode == 0
    refused = _ds_pip_check(venv)
    assert refused.returncode != 0
    assert "both onnxruntime onnxruntime-gpu are installed" in refused.stderr.strip().splitlines()[-1]
