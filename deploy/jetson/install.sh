#!/usr/bin/env bash
# Install dermsort as a systemd service on an NVIDIA Jetson with JetPack 6.1+ (L4T R36.4+).
# Read deploy/jetson/README.md first; `./install.sh --help` lists the options.
#
# What it does: checks L4T/JetPack and the system TensorRT; makes a venv that sees JetPack's
# TensorRT Python bindings (--system-site-packages); pip installs dermsort[tensorrt] with exactly one
# ONNX Runtime: NVIDIA's Jetson onnxruntime-gpu build ([gpu]) where the index has one, else the CPU
# onnxruntime ([cpu]), checked with `pip check`; builds TensorRT engines from the bundle on this
# device (engines do not move between GPUs or TensorRT versions) and verifies them against the
# bundle's verification set (the FP32 reference's decisions; no labels needed), refusing any that
# disagree;
# runs `dermsort bench` once if given labelled images; installs and starts dermsort.service.
set -euo pipefail

DS_DEPLOY_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
DS_PROG=dermsort-jetson-install
# shellcheck source=../common.sh
. "$DS_DEPLOY_DIR/common.sh"

# Jetson AI Lab's pip index (NVIDIA's Jetson team) carries onnxruntime-gpu built for JetPack 6 /
# CUDA 12.6. Override with --ort-index URL or DERMSORT_ORT_GPU_INDEX; empty = keep CPU onnxruntime.
JETSON_ORT_INDEX_JP6=https://pypi.jetson-ai-lab.io/jp6/cu126
JETSON_PRECISION=fp16,int8
JETSON_BUILD_ENGINES=1
JETSON_VENV_ONLY=0
JETSON_UNIT_LINES=$'# Jetson GPU device nodes (/dev/nvhost-*, /dev/nvmap) belong to group video.\nSupplementaryGroups=video'

jetson_usage() {
    ds_install_usage "$0" "  --ort-index URL       pip index with onnxruntime-gpu for this JetPack (default for
                        JetPack 6: $JETSON_ORT_INDEX_JP6; '' = CPU onnxruntime;
                        or set DERMSORT_ORT_GPU_INDEX)
  --precision LIST      engine precisions to build (default $JETSON_PRECISION)
  --skip-engines        do not build TensorRT engines now
  --venv-only           only make the venv (with the bench extra), as the full install makes it:
                        for images (deploy/jetson/Dockerfile); no config, service or engines
"
}

# Sets JETSON_L4T (e.g. 36.4.3) and JETSON_TRT (e.g. 10.3.0.30); refuses anything that is not a
# supported Jetson with a one-line reason.
jetson_check_platform() {
    local arch release_file line major="" revision="" dpkg_l4t l4t_major l4t_minor trt_major
    arch=$(ds_uname_m)
    [[ $arch == aarch64 ]] ||
        ds_die "this machine is $arch, not an NVIDIA Jetson (aarch64 with JetPack); use deploy/raspi on a Raspberry Pi, or 'pip install \"dermsort[cpu]\"' on a PC"
    release_file=$(ds_rp /etc/nv_tegra_release)
    if [[ -r $release_file ]]; then
        line=$(head -n 1 "$release_file")
        # "# R36 (release), REVISION: 4.3, GCID: ..., BOARD: generic, EABI: aarch64, DATE: ..."
        if [[ $line =~ R([0-9]+)[^,]*,[[:space:]]*REVISION:[[:space:]]*([0-9.]+) ]]; then
            major=${BASH_REMATCH[1]}
            revision=${BASH_REMATCH[2]}
        fi
    fi
    dpkg_l4t=$(ds_dpkg_version nvidia-l4t-core)
    dpkg_l4t=${dpkg_l4t%%-*}
    if [[ -z $major && -z $dpkg_l4t ]]; then
        ds_die "not a Jetson: no /etc/nv_tegra_release and no nvidia-l4t-core package; this installer is for NVIDIA Jetson with JetPack 6.1 or newer"
    fi
    if [[ -n $dpkg_l4t ]]; then
        JETSON_L4T=$dpkg_l4t
        if [[ -n $major && $dpkg_l4t != "$major.$revision"* ]]; then
            ds_warn "/etc/nv_tegra_release says R$major.$revision but nvidia-l4t-core is $dpkg_l4t; using $dpkg_l4t"
        fi
    else
        JETSON_L4T=$major.$revision
    fi
    l4t_major=${JETSON_L4T%%.*}
    l4t_minor=${JETSON_L4T#*.}
    l4t_minor=${l4t_minor%%.*}
    [[ $l4t_major =~ ^[0-9]+$ && $l4t_minor =~ ^[0-9]+$ ]] || ds_die "cannot read the L4T version (got '$JETSON_L4T')"
    if ((l4t_major < 36)); then
        ds_die "L4T R$JETSON_L4T (JetPack 5 or older) is not supported: dermsort needs Python 3.10+ and TensorRT 10, i.e. JetPack 6.1+ (L4T R36.4+); upgrade JetPack"
    fi
    if ((l4t_major == 36 && l4t_minor < 4)); then
        ds_die "L4T R$JETSON_L4T (JetPack 6.0) ships TensorRT 8.6; dermsort[tensorrt] needs TensorRT 10, i.e. JetPack 6.1+ (L4T R36.4+); upgrade JetPack"
    fi
    JETSON_TRT=$(ds_dpkg_version python3-libnvinfer)
    [[ -n $JETSON_TRT ]] ||
        ds_die "TensorRT's Python bindings are not installed (package python3-libnvinfer): sudo apt install nvidia-jetpack"
    trt_major=${JETSON_TRT%%.*}
    if [[ ! $trt_major =~ ^[0-9]+$ ]] || ((trt_major < 10)); then
        ds_die "system TensorRT is $JETSON_TRT; dermsort[tensorrt] needs TensorRT 10 (JetPack 6.1+)"
    fi
    if [[ -z ${JETSON_ORT_INDEX+set} ]]; then
        if ((l4t_major == 36)); then
            JETSON_ORT_INDEX=$JETSON_ORT_INDEX_JP6
        else
            JETSON_ORT_INDEX=""
            ds_warn "L4T R$JETSON_L4T is newer than this installer knows; pass --ort-index URL for a matching onnxruntime-gpu"
        fi
    fi
}

jetson_jetpack_name() {
    case $JETSON_L4T in
        36.4.0*) echo "JetPack 6.1" ;;
        36.4.3*) echo "JetPack 6.2" ;;
        36.4.4*) echo "JetPack 6.2.1" ;;
        36.*) echo "JetPack 6.x" ;;
        *) echo "JetPack ?" ;;
    esac
}

# Exactly one ONNX Runtime: onnxruntime (CPU) and onnxruntime-gpu share one import name and shadow
# each other. Downloads NVIDIA's Jetson onnxruntime-gpu wheel (no deps) from the index first; when
# it is here, dermsort is installed with [gpu] AND that wheel file named, so pip takes this build and
# never the CPU one; without it, with [cpu]. Sets JETSON_ORT_EXTRA and JETSON_ORT_WHEEL.
jetson_fetch_ort_gpu() {
    local wheel_dir
    JETSON_ORT_EXTRA=cpu
    JETSON_ORT_WHEEL=()
    if [[ -z $JETSON_ORT_INDEX ]]; then
        ds_warn "no onnxruntime-gpu index: installing the CPU onnxruntime (the tensorrt backend still runs on the GPU)"
        return 0
    fi
    wheel_dir=$(ds_rp "$DS_VENV")/ort-gpu-wheel
    if ! ds_run pip "$(ds_venv_python)" -m pip download --disable-pip-version-check --no-deps \
        --only-binary=:all: --index-url "$JETSON_ORT_INDEX" --dest "$wheel_dir" onnxruntime-gpu; then
        ds_warn "onnxruntime-gpu is not available from $JETSON_ORT_INDEX (offline, or no build for this JetPack/Python): installing the CPU onnxruntime; the tensorrt backend still runs on the GPU"
        return 0
    fi
    if ((DS_DRY_RUN)) || [[ -n $(ds_skip_reason pip) ]]; then
        JETSON_ORT_WHEEL=("$wheel_dir/onnxruntime_gpu-<version>-linux_aarch64.whl")
    else
        JETSON_ORT_WHEEL=("$(find "$wheel_dir" -maxdepth 1 -name 'onnxruntime_gpu-*.whl' -print -quit)")
        [[ -n ${JETSON_ORT_WHEEL[0]} ]] || ds_die "pip download reported success but left no onnxruntime_gpu wheel in $wheel_dir"
    fi
    JETSON_ORT_EXTRA=gpu
}

# pip install dermsort[tensorrt,gpu|cpu(,bench)]; a failed GPU install falls back to the CPU build.
jetson_install_dermsort() {
    local extras=$1
    if ! ds_pip_install "${DS_SOURCE}[tensorrt,$JETSON_ORT_EXTRA$extras]" ${JETSON_ORT_WHEEL[@]+"${JETSON_ORT_WHEEL[@]}"}; then
        [[ $JETSON_ORT_EXTRA == gpu ]] || ds_die "pip install of dermsort failed (see pip's message above)"
        ds_warn "installing with ${JETSON_ORT_WHEEL[0]} failed: installing the CPU onnxruntime instead"
        ds_run pip "$(ds_venv_python)" -m pip uninstall --disable-pip-version-check -y onnxruntime-gpu
        JETSON_ORT_EXTRA=cpu
        JETSON_ORT_WHEEL=()
        ds_pip_install "${DS_SOURCE}[tensorrt,cpu$extras]"
    fi
    if ((${#JETSON_ORT_WHEEL[@]})); then
        ds_run pip rm -rf -- "$(dirname -- "${JETSON_ORT_WHEEL[0]}")"
    fi
    ds_pip_check
}

# Builds the engines AND verifies them: with no labelled data here, against the bundle's verification
# set (the FP32 reference's decisions on a few bundled images); an engine that disagrees is refused and
# removed. export-engines exits 3 when a requested engine was refused or failed to build: the service
# then uses the engines that passed and the other backends, and the install says so.
jetson_build_engines() {
    local status=0
    ds_run dermsort "$(ds_venv_dermsort)" export-engines "$DS_BUNDLE" --precision "$JETSON_PRECISION" || status=$?
    case $status in
        0) ;;
        3) ds_warn "TensorRT engine(s) refused by the verification or not built (see above): they are not in the bundle; the service uses the verified engines and the other backends" ;;
        *) ds_die "dermsort export-engines failed (exit $status, see above); install with --skip-engines to go on without TensorRT engines" ;;
    esac
}

# The venv, the same for a full install and for --venv-only (the Docker image): JetPack's Python with
# --system-site-packages (TensorRT comes from JetPack's apt packages, not from PyPI), dermsort[tensorrt]
# with exactly one ONNX Runtime, pip check.
jetson_make_venv() { # MORE_EXTRAS (e.g. ,bench)
    ds_check_source
    ds_require_python
    ds_create_venv 1
    jetson_fetch_ort_gpu
    jetson_install_dermsort "$1"
}

# --venv-only: only the venv, for an image (deploy/jetson/Dockerfile): no config, user, service or
# engines, and no GPU needed. L4T container base images carry JetPack's packages (TensorRT) but not
# always the board's /etc/nv_tegra_release: without it the release is not checked.
jetson_venv_only() {
    if [[ -r $(ds_rp /etc/nv_tegra_release) || -n $(ds_dpkg_version nvidia-l4t-core) ]]; then
        jetson_check_platform
    else
        [[ $(ds_uname_m) == aarch64 ]] ||
            ds_die "this machine is $(ds_uname_m): the Jetson venv is built on aarch64 (on the Jetson, or an L4T base image)"
        JETSON_L4T="unknown (no /etc/nv_tegra_release in this image)"
        JETSON_TRT=$(ds_dpkg_version python3-libnvinfer)
        [[ -n $JETSON_TRT ]] ||
            ds_die "TensorRT's Python bindings are not installed (package python3-libnvinfer): build on an l4t-jetpack base image"
        [[ -n ${JETSON_ORT_INDEX+set} ]] || JETSON_ORT_INDEX=$JETSON_ORT_INDEX_JP6
    fi
    ds_require_privileges
    ds_log "venv only: $DS_VENV (L4T $JETSON_L4T, TensorRT $JETSON_TRT)$( ((DS_DRY_RUN)) && printf ' [dry run]')"
    jetson_make_venv ,bench
    if ! ds_run dermsort "$(ds_venv_python)" -c 'import tensorrt; print("TensorRT", tensorrt.__version__)'; then
        ds_warn "TensorRT does not import now (no GPU while an image is built?); check it at run time: docker run --runtime nvidia ..."
    fi
}

jetson_check_tensorrt_import() {
    if ! ds_run dermsort "$(ds_venv_python)" -c 'import tensorrt; print("TensorRT", tensorrt.__version__)'; then
        ds_die "the venv cannot import JetPack's TensorRT; it must be made by /usr/bin/python3 with --system-site-packages (remove $DS_VENV and install again)"
    fi
}

main() {
    ds_install_defaults
    while (($#)); do
        if ds_parse_install_option "$@"; then shift "$DS_SHIFT"; continue; fi
        case $1 in
            --ort-index) ds_need_arg "$@"; JETSON_ORT_INDEX=$2; shift 2 ;;
            --precision) ds_need_arg "$@"; JETSON_PRECISION=$2; shift 2 ;;
            --skip-engines) JETSON_BUILD_ENGINES=0; shift ;;
            --venv-only) JETSON_VENV_ONLY=1; shift ;;
            -h | --help) jetson_usage; exit 0 ;;
            *) ds_die "unknown option $1 (see --help)" ;;
        esac
    done
    if [[ -n ${DERMSORT_ORT_GPU_INDEX+set} && -z ${JETSON_ORT_INDEX+set} ]]; then
        JETSON_ORT_INDEX=$DERMSORT_ORT_GPU_INDEX
    fi
    if ((JETSON_VENV_ONLY)); then
        jetson_venv_only
        return 0
    fi
    jetson_check_platform
    ds_require_privileges
    ds_log "L4T $JETSON_L4T ($(jetson_jetpack_name)), TensorRT $JETSON_TRT$( ((DS_DRY_RUN)) && printf ' [dry run]')"
    ds_prepare_config
    ds_create_user
    ds_prepare_folders
    if ((!DS_RECONFIGURE)); then
        local bench=""
        [[ -n $DS_BENCH_DATA ]] && bench=,bench
        jetson_make_venv "$bench"
        jetson_check_tensorrt_import
        ds_resolve_bundle
        if ((JETSON_BUILD_ENGINES)); then
            jetson_build_engines
        else
            ds_log "--skip-engines: build them later with: $DS_VENV/bin/dermsort export-engines BUNDLE --precision $JETSON_PRECISION"
        fi
        ds_run_bench
    fi
    ds_install_service "$JETSON_UNIT_LINES"
    ds_install_summary
}

main "$@"
