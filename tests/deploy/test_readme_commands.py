"""The README's two set-up commands, parsed from README.md: they agree with CI and with the scripts,
and the first one works, literally, in a clean virtual environment (PEP 668 systems need the venv)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import DATA, REPO


def readme_commands() -> tuple[str, str]:
    """The first two ```bash blocks of the README's "Set up" section: install+sort, and test."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    assert len(blocks) >= 2, "README's Set up section must show the install and the test command"
    install, test = (b.strip() for b in blocks[:2])
    assert "\n" not in install and "\n" not in test, "each set-up command is one line"
    return install, test


def test_ci_runs_exactly_the_readme_test_command():
    _, test = readme_commands()
    lines = [l.strip() for l in (REPO / ".ci" / "run").read_text().splitlines()
             if l.strip() and not l.lstrip().startswith("#")]
    assert lines[-1] == f"exec {test}", lines[-1]
    script = (REPO / test.split()[0]).read_text()
    # the test script makes or reuses its own venv and runs pytest with that venv's python, never bare python3
    assert "python3 -m venv .venv" in script and "-x .venv/bin/python" in script
    assert re.search(r"^\.venv/bin/python -m pip install .*-e \"\.\[all\]\"$", script, flags=re.M)
    assert "--quiet" not in script and " -q -m pip" not in script  # progress is visible while installing
    assert re.search(r"^exec \.venv/bin/python -m pytest ", script, flags=re.M)
    assert not re.search(r"^\s*python3 -m pip", script, flags=re.M)


def test_readme_install_command_uses_its_own_venv():
    install, _ = readme_commands()
    steps = [s.strip() for s in install.split("&&")]
    venv = re.fullmatch(r"python3 -m venv (\S+)", steps[0])
    assert venv, f"the first step must create a virtual environment: {steps[0]}"
    env = venv.group(1)
    assert steps[1].startswith(f"{env}/bin/pip install "), steps[1]
    assert steps[-1].startswith(f"{env}/bin/dermsort sort "), steps[-1]
    assert not any(s.startswith(("pip ", "python3 -m pip", "dermsort ")) for s in steps)


@pytest.mark.slow
def test_readme_install_command_works_in_a_clean_venv(tmp_path):
    """Runs the README's first command literally (base install only, as written) in a copy of the
    repository with ../shared beside it; ~1 min with the local wheel indexes."""
    install, _ = readme_commands()
    if shutil.which("python3") is None:
        pytest.skip("no python3 on PATH")
    repo = tmp_path / "dermsort"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for rel in files:
        if (REPO / rel).is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, repo / rel)
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(DATA)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["DERMSORT_CACHE_DIR"] = str(tmp_path / "cache")
    res = subprocess.run(["bash", "-c", install], cwd=repo, capture_output=True, text=True, timeout=600, env=env)
    log = res.stdout + res.stderr
    if res.returncode != 0 and re.search(r"No matching distribution|Could not find a version|"
                                         r"Failed to establish a new connection", log):
        pytest.skip(f"pip cannot reach wheels for the base install here: {log.strip().splitlines()[-1]}")
    assert res.returncode == 0, log[-3000:]
    out = repo / "sorted"
    n = len(list((DATA / "ham10000-sample" / "images").iterdir()))
    assert len(list((out / "benign").iterdir())) + len(list((out / "review").iterdir())) == n
    assert (out / "report.html").is_file()
    # the venv is clean: the base install, without torch
    check = subprocess.run([str(repo / ".venv" / "bin" / "python"), "-c", "import importlib.util as u, sys;"
                            "sys.exit(u.find_spec('torch') is not None)"], capture_output=True, text=True)
    assert check.returncode == 0, "torch is importable in the README's venv: it is not a clean base install"
    res = subprocess.run([str(repo / ".venv" / "bin" / "dermsort"), "--help"], capture_output=True, text=True,
                         timeout=120, env=env)
    assert res.returncode == 0 and "report" in res.stdout
