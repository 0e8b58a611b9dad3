#!/usr/bin/env bash
# Install dermsort as a systemd service on a Raspberry Pi with Raspberry Pi OS 64-bit (Bookworm or
# newer). Read deploy/raspi/README.md first; `./install.sh --help` lists the options.
#
# What it does: refuses 32-bit systems (there are no onnxruntime wheels for them); makes a venv
# (Raspberry Pi OS marks its Python as externally managed, PEP 668); pip installs dermsort[cpu]
# (onnxruntime's aarch64 wheel), and with --with-openvino also OpenVINO (its ARM CPU plugin); checks
# the venv with `pip check`; runs `dermsort bench`
# once if given labelled images, so `--backend auto` picks what is fastest on this Pi; installs
# and starts dermsort.service.
set -euo pipefail

DS_DEPLOY_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
DS_PROG=dermsort-raspi-install
# shellcheck source=../common.sh
. "$DS_DEPLOY_DIR/common.sh"

RASPI_WITH_OPENVINO=0
# CPU-only inference needs no device nodes.
RASPI_UNIT_LINES=PrivateDevices=yes

raspi_usage() {
    ds_install_usage "$0" "  --with-openvino       also install OpenVINO (ARM CPU plugin); the bench decides whether
                        --backend auto uses it
"
}

raspi_check_platform() {
    local arch bits model_file os_id os_like
    arch=$(ds_uname_m)
    bits=$(ds_long_bit)
    case $arch in
        armv6l | armv7l | armv8l | armhf | arm)
            ds_die "32-bit ARM ($arch) is not supported: there are no onnxruntime wheels for 32-bit Raspberry Pi OS; reinstall the Pi with Raspberry Pi OS (64-bit)" ;;
    esac
    if [[ $bits == 32 ]]; then
        ds_die "32-bit userland on a $arch kernel (getconf LONG_BIT = 32) is not supported: there are no onnxruntime wheels for 32-bit Raspberry Pi OS; reinstall the Pi with Raspberry Pi OS (64-bit)"
    fi
    [[ $arch == aarch64 ]] ||
        ds_die "this machine is $arch: this installer is for Raspberry Pi OS 64-bit (aarch64); on a PC use 'pip install \"dermsort[cpu]\"'"
    os_id=$(ds_os_release ID)
    os_like=$(ds_os_release ID_LIKE)
    if [[ $os_id != debian && $os_id != raspbian && $os_like != *debian* ]]; then
        ds_warn "expected Raspberry Pi OS (Debian); /etc/os-release says ID=${os_id:-?}; continuing"
    fi
    model_file=$(ds_rp /proc/device-tree/model)
    if [[ -r $model_file ]]; then
        RASPI_MODEL=$(tr -d '\0' <"$model_file")
    else
        RASPI_MODEL="unknown board (no /proc/device-tree/model)"
        ds_warn "this does not look like a Raspberry Pi; continuing"
    fi
    RASPI_OS="$(ds_os_release PRETTY_NAME)"
}

main() {
    ds_install_defaults
    while (($#)); do
        if ds_parse_install_option "$@"; then shift "$DS_SHIFT"; continue; fi
        case $1 in
            --with-openvino) RASPI_WITH_OPENVINO=1; shift ;;
            -h | --help) raspi_usage; exit 0 ;;
            *) ds_die "unknown option $1 (see --help)" ;;
        esac
    done
    raspi_check_platform
    ds_require_privileges
    ds_log "$RASPI_MODEL, ${RASPI_OS:-unknown OS}$( ((DS_DRY_RUN)) && printf ' [dry run]')"
    ds_prepare_config
    ds_create_user
    ds_prepare_folders
    if ((!DS_RECONFIGURE)); then
        ds_check_source
        ds_require_python
        ds_create_venv 0
        # [cpu]: onnxruntime's aarch64 CPU wheel (dermsort's base install has no ONNX Runtime)
        local extras=cpu
        ((RASPI_WITH_OPENVINO)) && extras+=,openvino
        [[ -n $DS_BENCH_DATA ]] && extras+=,bench
        ds_pip_install "${DS_SOURCE}[$extras]"
        ds_pip_check
        [[ -n $DS_BENCH_DATA ]] && ds_resolve_bundle
        ds_run_bench
    fi
    ds_install_service "$RASPI_UNIT_LINES"
    ds_install_summary
}

main "$@"
