#!/usr/bin/env bash
# Fills a local wheelhouse (needs the package registry) with what tests/deploy/test_packaging.py installs
# OFFLINE into fresh venvs: both ONNX Runtime builds (onnxruntime, onnxruntime-gpu) and dermsort's base
# dependencies, for this machine's Python and platform, and the build requirements of dermsort's wheel. Without it that test skips and says so.
#   scripts/fill-wheelhouse.sh [DIR]     (default $DERMSORT_WHEELHOUSE or ~/.cache/dermsort/wheelhouse)
# The same wheels, downloaded for the target (--platform manylinux2014_aarch64 --python-version 3.11),
# make an offline install on a Pi or Jetson: see deploy/README.md.
set -euo pipefail
DEST=${1:-${DERMSORT_WHEELHOUSE:-$HOME/.cache/dermsort/wheelhouse}}
PYTHON=${PYTHON:-python3}
mkdir -p "$DEST"
"$PYTHON" -m pip download --disable-pip-version-check --only-binary=:all: --dest "$DEST" \
    "onnxruntime>=1.17" "numpy>=1.24" "pillow>=10.0" "click>=8.1" "cryptography>=41" "setuptools>=64" wheel
"$PYTHON" -m pip download --disable-pip-version-check --only-binary=:all: --dest "$DEST" "onnxruntime-gpu>=1.17"
echo "wheelhouse: $DEST"
