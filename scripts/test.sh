#!/usr/bin/env bash
# The README's test command: install dermsort with every extra that runs on a CPU machine, then run
# the whole suite. torch/torchvision come pinned from setup.cfg (the [train]/[export] extras).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f ../shared/data/README.md ]; then
    echo "test data not found: expected ../shared/data beside this repository (see docs/DATA.md)" >&2
    exit 4
fi
python3 -m pip install --quiet --disable-pip-version-check -e ".[all]"
exec python3 -m pytest -q -p no:cacheprovider "$@"
