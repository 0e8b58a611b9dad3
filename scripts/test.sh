#!/usr/bin/env bash
# The README's test command (.ci/run calls exactly this). It works on a stock Debian 12 / Ubuntu 24.04
# whose system Python refuses `pip install` (PEP 668): it makes (or reuses) the repository's own
# virtual environment .venv, installs dermsort with every extra that runs on a CPU machine into it
# (torch/torchvision pinned by setup.cfg's [train]/[export] extras), installs headless Chromium for
# the review-page browser test where it can (DERMSORT_NO_APT=1 skips that), and runs the suite with
# that environment's python. Arguments go to pytest (e.g. `./scripts/test.sh tests/runtime/test_cli.py`).
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '[test.sh] %s\n' "$*" >&2; }

if [ ! -f ../shared/data/README.md ]; then
    echo "test data not found: expected ../shared/data beside this repository (see docs/DATA.md)" >&2
    exit 4
fi

if [ -x .venv/bin/python ]; then
    step "1/4 reusing the virtual environment .venv ($(.venv/bin/python --version 2>&1))"
else
    step "1/4 creating the virtual environment .venv (python3 -m venv .venv)"
    if ! python3 -m venv .venv; then
        echo "could not create .venv: install the venv module (Debian/Ubuntu: apt-get install python3-venv)" >&2
        exit 3
    fi
fi

step "2/4 installing dermsort[all] into .venv (the first time this downloads torch and friends: minutes)"
.venv/bin/python -m pip install --disable-pip-version-check -e ".[all]"

if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    step "3/4 headless Chromium for the review-page test: $(command -v chromium || command -v chromium-browser)"
elif [ "${DERMSORT_NO_APT:-0}" = 1 ]; then
    step "3/4 DERMSORT_NO_APT=1: not installing Chromium; the browser test will be skipped"
elif command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    step "3/4 installing headless Chromium (Debian package chromium) for the review-page test"
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get install -y --no-install-recommends chromium || { apt-get update && apt-get install -y --no-install-recommends chromium; }; }; then
        step "    could not install chromium: the browser test will be skipped (its skip reason says so)"
    fi
elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    step "3/4 installing headless Chromium (sudo apt-get install chromium) for the review-page test"
    if ! { sudo -n apt-get install -y --no-install-recommends chromium \
           || { sudo -n apt-get update && sudo -n apt-get install -y --no-install-recommends chromium; }; }; then
        step "    could not install chromium: the browser test will be skipped (its skip reason says so)"
    fi
else
    step "3/4 Chromium is not installed and cannot be installed here (needs apt-get as root or password-less sudo):"
    step "    the browser test will be skipped (its skip reason says so)"
fi

# strace lets a test check the durability order of --move from its system calls (fsync before unlink);
# without it that test is skipped, and -rs below prints why
if ! command -v strace >/dev/null 2>&1 && [ "${DERMSORT_NO_APT:-0}" != 1 ] && command -v apt-get >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        step "    installing strace (Debian package strace) for the --move durability-order test"
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends strace >/dev/null 2>&1 \
            || { apt-get update >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends strace >/dev/null 2>&1; } \
            || step "    could not install strace: the durability-order test will be skipped (its skip reason says so)"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        step "    installing strace (sudo apt-get install strace) for the --move durability-order test"
        sudo -n apt-get install -y --no-install-recommends strace >/dev/null 2>&1 \
            || step "    could not install strace: the durability-order test will be skipped (its skip reason says so)"
    fi
fi

step "4/4 running the tests with .venv/bin/python (-rs: every skipped test says why)"
exec .venv/bin/python -m pytest -q -rs -p no:cacheprovider "$@"
