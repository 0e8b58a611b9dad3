#!/usr/bin/env bash
# Remove the dermsort service from this NVIDIA Jetson: stops and disables dermsort.service and removes
# the venv, the unit and the wrapper. Keeps /etc/dermsort/dermsort.conf; never deletes an image.
# `./uninstall.sh --help` lists the options (--dry-run shows every step first).
set -euo pipefail

DS_DEPLOY_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
DS_PROG=dermsort-jetson-uninstall
# shellcheck source=../common.sh
. "$DS_DEPLOY_DIR/common.sh"

ds_uninstall_main "NVIDIA Jetson" "$@"
