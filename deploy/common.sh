# shellcheck shell=bash
# Shared functions for deploy/{jetson,raspi}/{install,uninstall}.sh and the service wrapper
# (deploy/dermsort-service.sh, installed as /opt/dermsort/bin/dermsort-service next to a copy of this
# file in /opt/dermsort/lib/). Sourcing it only defines functions and defaults; it does nothing.
#
# Conventions every script follows:
#   --dry-run   prints each command it would run and each file it would write or remove, does none
#   --root DIR  every path the scripts read or write (/etc, /opt, /var, the image folders) is taken
#               under DIR; the paths written *into* files (config, unit) stay the real ones.
# Test hooks (environment): DERMSORT_UNAME_M, DERMSORT_LONG_BIT and DERMSORT_PYTHON replace what is
# detected; DERMSORT_SKIP_PIP=1 (venv + pip, and with them every step that runs the installed
# dermsort), DERMSORT_SKIP_DERMSORT=1 (export-engines, bench), DERMSORT_SKIP_SYSTEMCTL=1 and
# DERMSORT_SKIP_APT=1 skip those steps for real runs and print "skipped (...)" instead. The system
# user and file ownership are only touched when --root is /.

set -euo pipefail

DS_PROG=${DS_PROG:-dermsort-deploy}
DS_ROOT=/
DS_DRY_RUN=0
DS_DIE_STATUS=1
DS_EX_CONFIG=78 # sysexits EX_CONFIG: the unit does not restart on it (RestartPreventExitStatus)

DS_CONFIG=/etc/dermsort/dermsort.conf
DS_UNIT_NAME=dermsort.service
DS_UNIT=/etc/systemd/system/dermsort.service
DS_DROPIN=/etc/systemd/system/dermsort.service.d/10-paths.conf
DS_PREFIX=/opt/dermsort
DS_WRAPPER=/opt/dermsort/bin/dermsort-service
DS_LIB=/opt/dermsort/lib/dermsort-common.sh
DS_VENV=/opt/dermsort/venv
DS_STATE_DIR=/var/lib/dermsort
DS_CACHE_DIR=/var/cache/dermsort
DS_BENCH_OUT=/var/lib/dermsort/bench
DS_USER=dermsort
DS_DEFAULT_OUTPUT=/srv/dermsort/sorted
DS_MODES=(copy move)
DS_BACKENDS=(auto onnxruntime openvino tensorrt)

# ---------------------------------------------------------------- messages and paths

ds_log() { printf '%s: %s\n' "$DS_PROG" "$*"; }
ds_warn() { printf '%s: warning: %s\n' "$DS_PROG" "$*" >&2; }
# One line on stderr, then exit: every refusal is a single readable line.
ds_die() {
    printf '%s: error: %s\n' "$DS_PROG" "$*" >&2
    exit "$DS_DIE_STATUS"
}

# The path as seen from this process: PATH under --root.
ds_rp() {
    if [[ $DS_ROOT == / ]]; then printf '%s' "$1"; else printf '%s%s' "${DS_ROOT%/}" "$1"; fi
}

# A command line as it could be pasted into a shell: plain words bare, anything else in '...'.
ds_quote() {
    local out="" arg q="'"
    for arg in "$@"; do
        if [[ -n $arg && $arg =~ ^[A-Za-z0-9_./:=,+@%-]+$ ]]; then
            out+="$arg "
        else
            out+="$q${arg//$q/$q\\$q$q}$q "
        fi
    done
    printf '%s' "${out% }"
}

ds_uname_m() { printf '%s' "${DERMSORT_UNAME_M:-$(uname -m)}"; }
ds_long_bit() { printf '%s' "${DERMSORT_LONG_BIT:-$(getconf LONG_BIT)}"; }

# Collapse // and /./ and drop a trailing / (no symlink resolution: that is done where the folders exist).
ds_norm_path() {
    local p=$1
    while [[ $p == *//* ]]; do p=${p//\/\//\/}; done
    while [[ $p == */./* ]]; do p=${p//\/.\//\/}; done
    [[ $p == */. ]] && p=${p%/.}
    [[ $p != / ]] && p=${p%/}
    printf '%s' "${p:-/}"
}

# ds_is_inside CHILD PARENT: true when CHILD is PARENT or below it (normalised absolute paths).
ds_is_inside() {
    local child parent
    child=$(ds_norm_path "$1")
    parent=$(ds_norm_path "$2")
    [[ $parent == / || $child == "$parent" || $child == "$parent"/* ]]
}

# ---------------------------------------------------------------- actions (dry-run aware)

# Why a real run skips this category of command, or nothing.
ds_skip_reason() {
    case $1 in
        pip) [[ ${DERMSORT_SKIP_PIP:-0} == 1 ]] && echo "DERMSORT_SKIP_PIP=1" ;;
        dermsort)
            if [[ ${DERMSORT_SKIP_PIP:-0} == 1 ]]; then echo "DERMSORT_SKIP_PIP=1: dermsort is not installed"
            elif [[ ${DERMSORT_SKIP_DERMSORT:-0} == 1 ]]; then echo "DERMSORT_SKIP_DERMSORT=1"; fi ;;
        systemctl) [[ ${DERMSORT_SKIP_SYSTEMCTL:-0} == 1 ]] && echo "DERMSORT_SKIP_SYSTEMCTL=1" ;;
        apt) [[ ${DERMSORT_SKIP_APT:-0} == 1 ]] && echo "DERMSORT_SKIP_APT=1" ;;
        user) [[ $DS_ROOT != / ]] && echo "--root is not /: users and ownership are set on the real system only" ;;
    esac
    return 0
}

# ds_run CATEGORY COMMAND...: print the command, then run it unless --dry-run or skipped.
ds_run() {
    local category=$1 shown reason
    shift
    shown=$(ds_quote "$@")
    reason=$(ds_skip_reason "$category")
    if [[ -n $reason ]]; then
        if ((DS_DRY_RUN)); then printf '[dry-run] skip (%s): %s\n' "$reason" "$shown"; else printf 'skipped (%s): %s\n' "$reason" "$shown"; fi
        return 0
    fi
    if ((DS_DRY_RUN)); then
        printf '[dry-run] run: %s\n' "$shown"
        return 0
    fi
    printf '+ %s\n' "$shown"
    "$@"
}

# ds_write_file DEST MODE < CONTENT: atomic write (temp file + rename); dry-run prints the content.
ds_write_file() {
    local dest=$1 mode=$2 content tmp
    content=$(cat && printf x)
    content=${content%x}
    if ((DS_DRY_RUN)); then
        printf '[dry-run] write: %s (mode %s)\n' "$dest" "$mode"
        printf '%s' "$content" | sed 's/^/    | /'
        return 0
    fi
    mkdir -p -- "$(dirname -- "$dest")"
    tmp=$(mktemp "$dest.tmp.XXXXXX")
    printf '%s' "$content" >"$tmp"
    chmod "$mode" "$tmp"
    mv -f -- "$tmp" "$dest"
    printf 'wrote: %s (mode %s)\n' "$dest" "$mode"
}

ds_copy_file() { # SRC DEST MODE
    [[ -r $1 ]] || ds_die "missing file in this checkout: $1"
    if ((DS_DRY_RUN)); then
        printf '[dry-run] write: %s (mode %s, copy of %s)\n' "$2" "$3" "$1"
        return 0
    fi
    ds_write_file "$2" "$3" <"$1"
}

ds_mkdir() { # DIR MODE
    if [[ -d $1 ]]; then return 0; fi
    if ((DS_DRY_RUN)); then
        printf '[dry-run] mkdir: %s (mode %s)\n' "$1" "$2"
        return 0
    fi
    mkdir -p -- "$1"
    chmod "$2" "$1"
    printf 'created: %s (mode %s)\n' "$1" "$2"
}

ds_remove_file() {
    if [[ ! -e $1 && ! -L $1 ]]; then printf 'not present: %s\n' "$1"; return 0; fi
    if ((DS_DRY_RUN)); then printf '[dry-run] remove: %s\n' "$1"; return 0; fi
    rm -f -- "$1"
    printf 'removed: %s\n' "$1"
}

# Remove an empty folder; a folder with anything in it is kept (this never deletes a file).
ds_rmdir_if_empty() {
    if [[ ! -d $1 ]]; then return 0; fi
    if ((DS_DRY_RUN)); then printf '[dry-run] rmdir if empty by then: %s\n' "$1"; return 0; fi
    if [[ -n $(find "$1" -mindepth 1 -maxdepth 1 -print -quit) ]]; then
        printf 'kept (not empty): %s\n' "$1"
        return 0
    fi
    rmdir -- "$1"
    printf 'removed empty folder: %s\n' "$1"
}

# ds_remove_tree DIR REQUIRED_MARKER: rm -rf, but only when DIR holds MARKER (e.g. pyvenv.cfg) and
# contains neither image folder of the config.
ds_remove_tree() {
    local dir=$1 marker=$2 real
    if [[ ! -e $dir ]]; then printf 'not present: %s\n' "$dir"; return 0; fi
    [[ $(ds_norm_path "$dir") != / ]] || ds_die "refusing to remove /"
    if [[ -n $marker && ! -e $dir/$marker ]]; then
        ds_warn "kept $dir: it has no $marker, so it is not what the installer created"
        return 0
    fi
    for real in "${CFG_INPUT:-}" "${CFG_OUTPUT:-}"; do
        if [[ -n $real ]] && ds_is_inside "$(ds_rp "$real")" "$dir"; then
            ds_warn "kept $dir: it contains the image folder $real"
            return 0
        fi
    done
    if ((DS_DRY_RUN)); then printf '[dry-run] remove tree: %s\n' "$dir"; return 0; fi
    rm -rf -- "$dir"
    printf 'removed: %s\n' "$dir"
}

# ---------------------------------------------------------------- platform facts

# KEY=VALUE files (os-release, dermsort.conf): prints KEY=VALUE with one level of quotes removed.
# Nothing is evaluated: a value is text, never shell.
ds_parse_env_file() {
    local file=$1 line key value
    while IFS= read -r line || [[ -n $line ]]; do
        line=${line%$'\r'}
        [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
        if [[ $line =~ ^[[:space:]]*(export[[:space:]]+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]]; then
            key=${BASH_REMATCH[2]}
            value=${BASH_REMATCH[3]}
            if [[ $value =~ ^\"(.*)\"[[:space:]]*$ || $value =~ ^\'(.*)\'[[:space:]]*$ ]]; then
                value=${BASH_REMATCH[1]}
            else
                value=${value%"${value##*[![:space:]]}"}
            fi
            printf '%s=%s\n' "$key" "$value"
        else
            ds_warn "$file: ignoring a line that is not KEY=VALUE: $line"
        fi
    done <"$file"
}

ds_os_release() { # KEY -> value from ROOT/etc/os-release, or empty
    local file kv
    file=$(ds_rp /etc/os-release)
    [[ -r $file ]] || return 0
    while IFS= read -r kv; do
        if [[ ${kv%%=*} == "$1" ]]; then printf '%s' "${kv#*=}"; return 0; fi
    done < <(ds_parse_env_file "$file")
}

# Version of an installed Debian package, read from dpkg's status database under --root.
ds_dpkg_version() {
    local status
    status=$(ds_rp /var/lib/dpkg/status)
    [[ -r $status ]] || return 0
    awk -v pkg="$1" '
        /^Package: / { p = ($2 == pkg); inst = 0; ver = "" }
        p && /^Status: .* installed$/ { inst = 1 }
        p && /^Version: / { ver = $2 }
        /^$/ { if (p && inst && ver != "") { print ver; exit } p = 0 }
        END { if (p && inst && ver != "") print ver }
    ' "$status" | head -n 1
}

ds_require_python() { # the interpreter the venv is built from
    local facts version new_enough has_venv
    DS_PYTHON=${DERMSORT_PYTHON:-/usr/bin/python3}
    [[ -x $DS_PYTHON ]] || ds_die "$DS_PYTHON not found: sudo apt install python3 python3-venv"
    # one start-up (-I -S: no site packages needed) for the version and whether venv can bootstrap pip
    facts=$("$DS_PYTHON" -I -S -c '
import platform, sys
try:
    import ensurepip, venv
    ensurepip.version()
    has_venv = 1
except Exception:
    has_venv = 0
print(platform.python_version(), int(sys.version_info >= (3, 10)), has_venv)') || ds_die "$DS_PYTHON does not run"
    read -r version new_enough has_venv <<<"$facts"
    ((new_enough)) || ds_die "dermsort needs Python 3.10 or newer; $DS_PYTHON is $version"
    if ((!has_venv)); then
        ds_run apt apt-get update
        ds_run apt apt-get install -y python3-venv
    fi
}

# ---------------------------------------------------------------- configuration

# shellcheck disable=SC2034 # used by dermsort-service.sh
DS_CONFIG_KEYS=(DERMSORT_INPUT DERMSORT_OUTPUT DERMSORT_MODE DERMSORT_MODEL DERMSORT_BACKEND DERMSORT_EXTRA_ARGS)

ds_config_defaults() {
    CFG_INPUT=""
    CFG_OUTPUT=$DS_DEFAULT_OUTPUT
    CFG_MODE=copy
    CFG_MODEL=""
    CFG_BACKEND=auto
    CFG_EXTRA_ARGS=""
}

ds_set_config_key() { # KEY VALUE
    case $1 in
        DERMSORT_INPUT) CFG_INPUT=$2 ;;
        DERMSORT_OUTPUT) CFG_OUTPUT=$2 ;;
        DERMSORT_MODE) CFG_MODE=$2 ;;
        DERMSORT_MODEL) CFG_MODEL=$2 ;;
        DERMSORT_BACKEND) CFG_BACKEND=$2 ;;
        DERMSORT_EXTRA_ARGS) CFG_EXTRA_ARGS=$2 ;;
        *) return 1 ;;
    esac
}

ds_load_config() { # FILE: sets CFG_* for the keys it holds
    local kv
    while IFS= read -r kv; do
        ds_set_config_key "${kv%%=*}" "${kv#*=}" || ds_warn "$1: unknown key ${kv%%=*} ignored"
    done < <(ds_parse_env_file "$1")
}

ds_in_list() { # WORD LIST...
    local word=$1 item
    shift
    for item in "$@"; do [[ $item == "$word" ]] && return 0; done
    return 1
}

# Checks that need no file system: one line and exit on the first problem.
ds_validate_config() {
    local key value
    [[ -n $CFG_INPUT ]] || ds_die "DERMSORT_INPUT is empty: set the dermatoscope's export folder (install.sh --input DIR, or $DS_CONFIG)"
    [[ -n $CFG_OUTPUT ]] || ds_die "DERMSORT_OUTPUT is empty: set the folder that gets benign/ and review/"
    for key in DERMSORT_INPUT DERMSORT_OUTPUT DERMSORT_MODEL DERMSORT_EXTRA_ARGS; do
        case $key in
            DERMSORT_INPUT) value=$CFG_INPUT ;; DERMSORT_OUTPUT) value=$CFG_OUTPUT ;;
            DERMSORT_MODEL) value=$CFG_MODEL ;; DERMSORT_EXTRA_ARGS) value=$CFG_EXTRA_ARGS ;;
        esac
        # The config is read both by this wrapper and by systemd (EnvironmentFile), which treat these
        # characters differently; refusing them keeps the two readings identical.
        if [[ $value == *[\"\\\$\`]* || $value == *$'\n'* || $value == *$'\t'* ]]; then
            ds_die "$key contains a quote, backslash, \$, backquote or tab: use a plain path"
        fi
        if [[ $key != DERMSORT_EXTRA_ARGS && -n $value && $value != /* ]]; then
            ds_die "$key=$value is not an absolute path (start it with /)"
        fi
    done
    ds_in_list "$CFG_MODE" "${DS_MODES[@]}" || ds_die "DERMSORT_MODE=$CFG_MODE: choose copy or move"
    ds_in_list "$CFG_BACKEND" "${DS_BACKENDS[@]}" ||
        ds_die "DERMSORT_BACKEND=$CFG_BACKEND: choose one of ${DS_BACKENDS[*]}"
    if ds_is_inside "$CFG_OUTPUT" "$CFG_INPUT"; then
        ds_die "output folder $CFG_OUTPUT is inside the input folder $CFG_INPUT: dermsort would sort its own results again; choose an output folder outside the input"
    fi
}

ds_render_config() {
    cat <<EOF
# dermsort service configuration. Read by $DS_WRAPPER and by systemd
# (EnvironmentFile of $DS_UNIT_NAME). Format: KEY="VALUE", one per line; no quotes,
# backslashes or \$ inside values.
# After changing DERMSORT_INPUT, DERMSORT_OUTPUT or DERMSORT_MODE run the installer again with
# --reconfigure (the service's file-system sandbox lists these folders); after other changes:
#   sudo systemctl restart dermsort

# Folder the dermatoscope exports images to. In copy mode it is only read.
DERMSORT_INPUT="$CFG_INPUT"
# Gets benign/, review/ and results.csv. Must not be inside DERMSORT_INPUT.
DERMSORT_OUTPUT="$CFG_OUTPUT"
# copy (originals stay where they are) or move.
DERMSORT_MODE="$CFG_MODE"
# Model bundle folder; empty = the default model shipped with dermsort.
DERMSORT_MODEL="$CFG_MODEL"
# auto (uses the machine profile written by 'dermsort bench'), onnxruntime, openvino or tensorrt.
DERMSORT_BACKEND="$CFG_BACKEND"
# More options for 'dermsort watch', split at spaces, e.g. "--recursive --interval 5".
DERMSORT_EXTRA_ARGS="$CFG_EXTRA_ARGS"
EOF
}

# ---------------------------------------------------------------- systemd unit

# A value for a unit file: quoted (paths may hold spaces) and with % escaped (unit specifiers).
ds_unit_quote() { printf '"%s"' "${1//%/%%}"; }

# ds_render_unit EXTRA_SERVICE_LINES: device-specific [Service] lines (e.g. SupplementaryGroups).
ds_render_unit() {
    cat <<EOF
# Installed by dermsort's deploy scripts. Folder-specific sandbox settings live in the drop-in
# ${DS_DROPIN#/etc/systemd/system/}, generated from $DS_CONFIG.
[Unit]
Description=dermsort: sort new dermoscopy images into benign/ and review/
After=local-fs.target remote-fs.target

[Service]
Type=exec
User=$DS_USER
Group=$DS_USER
EnvironmentFile=-$DS_CONFIG
Environment=DERMSORT_CONFIG=$DS_CONFIG
Environment=PATH=$DS_VENV/bin:/usr/local/bin:/usr/bin:/bin
Environment=HOME=$DS_STATE_DIR
Environment=DERMSORT_CACHE_DIR=$DS_CACHE_DIR
Environment=PYTHONUNBUFFERED=1
ExecStart=$DS_WRAPPER
# dermsort watch finishes the current batch on SIGTERM and exits 0 on SIGTERM (a requested stop, so
# Restart=on-failure does not restart it; Ctrl-C exits 130); its journal makes a hard stop safe too.
KillSignal=SIGTERM
TimeoutStopSec=60
Restart=on-failure
RestartSec=10
RestartPreventExitStatus=$DS_EX_CONFIG
StandardOutput=journal
StandardError=journal
SyslogIdentifier=dermsort
StateDirectory=dermsort
CacheDirectory=dermsort
NoNewPrivileges=yes
ProtectSystem=strict
PrivateTmp=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes
LockPersonality=yes
$1

[Install]
WantedBy=multi-user.target
EOF
}

ds_render_dropin() {
    local input_rw=""
    # copy mode only reads the input (ProtectSystem=strict leaves it readable); move needs to write it.
    # "-": a missing input must not stop the sandbox set-up; the wrapper then says what is wrong.
    [[ $CFG_MODE == move ]] && input_rw=" $(ds_unit_quote "-$CFG_INPUT")"
    cat <<EOF
# Generated from $DS_CONFIG by the dermsort installer; run it again with --reconfigure after
# changing DERMSORT_INPUT, DERMSORT_OUTPUT or DERMSORT_MODE.
[Unit]
RequiresMountsFor=$(ds_unit_quote "$CFG_INPUT") $(ds_unit_quote "$CFG_OUTPUT")

[Service]
ReadWritePaths=$(ds_unit_quote "$CFG_OUTPUT")$input_rw
EOF
}

# ---------------------------------------------------------------- install steps

ds_install_usage() { # DEVICE_SCRIPT DEVICE_OPTIONS_TEXT
    cat <<EOF
usage: $1 [options]

Installs dermsort into a venv, writes $DS_CONFIG, and installs the systemd service
$DS_UNIT_NAME that watches the dermatoscope's export folder.

  --input DIR           folder the dermatoscope exports to (required on first install)
  --output DIR          where benign/ and review/ go (default $DS_DEFAULT_OUTPUT)
  --mode copy|move      copy (default) leaves the originals in place
  --model DIR           model bundle (default: the model shipped with dermsort)
  --backend NAME        auto (default), onnxruntime, openvino or tensorrt
  --extra-args "ARGS"   more options for 'dermsort watch'
  --overwrite-config    update an existing $DS_CONFIG with the values given above
  --source PATH|WHEEL   what to pip install (default: the repository this script is in)
  --venv DIR            virtual environment (default $DS_VENV)
  --bench-data DIR      labelled images: run 'dermsort bench' once, which writes the machine
                        profile that --backend auto uses
  --bench-out DIR       bench report folder (default $DS_BENCH_OUT)
  --reconfigure         only regenerate the unit from the existing config and restart it
  --no-start            enable the service but do not (re)start it now
  --dry-run             print every command and file write, do nothing
  --root DIR            operate on DIR as the file-system root (tests, image preparation)
$2  -h, --help            this help
EOF
}

ds_install_defaults() {
    DS_SOURCE=$(cd -- "$DS_DEPLOY_DIR/.." && pwd)
    DS_BENCH_DATA=""
    DS_RECONFIGURE=0
    DS_START=1
    DS_OVERWRITE_CONFIG=0
    DS_CONFIG_FLAGS=()
    DS_OPT_INPUT="" DS_OPT_OUTPUT="" DS_OPT_MODE="" DS_OPT_MODEL="" DS_OPT_BACKEND="" DS_OPT_EXTRA_ARGS=""
}

ds_need_arg() { [[ $# -ge 2 ]] || ds_die "$1 needs a value (see --help)"; }

# ds_parse_common_option ARGS...: handles one option; sets DS_SHIFT, returns 1 if not ours.
ds_parse_common_option() {
    DS_SHIFT=2
    case $1 in
        --dry-run) DS_DRY_RUN=1 DS_SHIFT=1 ;;
        --root) ds_need_arg "$@"; DS_ROOT=$2 ;;
        --root=*) DS_ROOT=${1#*=} DS_SHIFT=1 ;;
        --venv) ds_need_arg "$@"; DS_VENV=$2 ;;
        *) return 1 ;;
    esac
    [[ $DS_ROOT == /* ]] || ds_die "--root needs an absolute path"
    DS_ROOT=$(ds_norm_path "$DS_ROOT")
    [[ $DS_VENV == /* ]] || ds_die "--venv needs an absolute path"
    return 0
}

ds_parse_install_option() {
    if ds_parse_common_option "$@"; then return 0; fi
    DS_SHIFT=2
    case $1 in
        --input) ds_need_arg "$@"; DS_OPT_INPUT=$2; DS_CONFIG_FLAGS+=(--input) ;;
        --output) ds_need_arg "$@"; DS_OPT_OUTPUT=$2; DS_CONFIG_FLAGS+=(--output) ;;
        --mode) ds_need_arg "$@"; DS_OPT_MODE=$2; DS_CONFIG_FLAGS+=(--mode) ;;
        --model) ds_need_arg "$@"; DS_OPT_MODEL=$2; DS_CONFIG_FLAGS+=(--model) ;;
        --backend) ds_need_arg "$@"; DS_OPT_BACKEND=$2; DS_CONFIG_FLAGS+=(--backend) ;;
        --extra-args) ds_need_arg "$@"; DS_OPT_EXTRA_ARGS=$2; DS_CONFIG_FLAGS+=(--extra-args) ;;
        --overwrite-config) DS_OVERWRITE_CONFIG=1 DS_SHIFT=1 ;;
        --source) ds_need_arg "$@"; DS_SOURCE=$2 ;;
        --bench-data) ds_need_arg "$@"; DS_BENCH_DATA=$2 ;;
        --bench-out) ds_need_arg "$@"; DS_BENCH_OUT=$2 ;;
        --reconfigure) DS_RECONFIGURE=1 DS_SHIFT=1 ;;
        --no-start) DS_START=0 DS_SHIFT=1 ;;
        *) return 1 ;;
    esac
}

ds_require_privileges() {
    if [[ $DS_ROOT == / ]] && ((!DS_DRY_RUN)) && [[ $(id -u) != 0 ]]; then
        ds_die "run it as root: sudo $0 ..."
    fi
}

ds_apply_config_flag() { # FLAG VALUE
    case $1 in
        --input) CFG_INPUT=$2 ;; --output) CFG_OUTPUT=$2 ;; --mode) CFG_MODE=$2 ;;
        --model) CFG_MODEL=$2 ;; --backend) CFG_BACKEND=$2 ;; --extra-args) CFG_EXTRA_ARGS=$2 ;;
    esac
}

# Reads or writes the config, then checks it; never changes an existing config unless asked.
ds_prepare_config() {
    local cfg flag write=1
    cfg=$(ds_rp "$DS_CONFIG")
    ds_config_defaults
    if [[ -f $cfg ]]; then
        ds_load_config "$cfg"
        if ((!DS_OVERWRITE_CONFIG)); then
            write=0
            ds_log "keeping the existing $cfg"
            if ((${#DS_CONFIG_FLAGS[@]})); then
                ds_warn "ignored ${DS_CONFIG_FLAGS[*]}: $cfg exists (edit it, or pass --overwrite-config)"
            fi
        fi
    elif ((DS_RECONFIGURE)); then
        ds_die "--reconfigure needs an existing $cfg; run the full install first"
    fi
    if ((write)); then
        for flag in ${DS_CONFIG_FLAGS[@]+"${DS_CONFIG_FLAGS[@]}"}; do
            case $flag in
                --input) ds_apply_config_flag "$flag" "$DS_OPT_INPUT" ;;
                --output) ds_apply_config_flag "$flag" "$DS_OPT_OUTPUT" ;;
                --mode) ds_apply_config_flag "$flag" "$DS_OPT_MODE" ;;
                --model) ds_apply_config_flag "$flag" "$DS_OPT_MODEL" ;;
                --backend) ds_apply_config_flag "$flag" "$DS_OPT_BACKEND" ;;
                --extra-args) ds_apply_config_flag "$flag" "$DS_OPT_EXTRA_ARGS" ;;
            esac
        done
        [[ -z $CFG_INPUT ]] && ds_die "--input DIR is required: the folder the dermatoscope exports images to"
    fi
    CFG_INPUT=$(ds_norm_path "$CFG_INPUT")
    CFG_OUTPUT=$(ds_norm_path "$CFG_OUTPUT")
    [[ -n $CFG_MODEL ]] && CFG_MODEL=$(ds_norm_path "$CFG_MODEL")
    ds_validate_config
    if [[ -n $CFG_MODEL && ! -e $(ds_rp "$CFG_MODEL") ]]; then
        ds_die "model bundle $CFG_MODEL not found"
    fi
    if ((write)); then ds_render_config | ds_write_file "$cfg" 0644; fi
    if [[ ! -d $(ds_rp "$CFG_INPUT") ]]; then
        ds_warn "input folder $CFG_INPUT does not exist yet: the service refuses to start until it does"
    fi
}

ds_create_user() {
    if [[ $DS_ROOT == / ]] && getent passwd "$DS_USER" >/dev/null; then
        ds_log "system user $DS_USER exists"
    else
        ds_run user useradd --system --user-group --home-dir "$DS_STATE_DIR" --no-create-home \
            --shell /usr/sbin/nologin --comment "dermsort service" "$DS_USER"
    fi
}

# Folders the service writes: the output (created only if missing; an existing one keeps its owner),
# its state and cache (systemd also creates those), the bench report folder.
ds_prepare_folders() {
    local out
    out=$(ds_rp "$CFG_OUTPUT")
    if [[ -d $out ]]; then
        ds_log "output folder $CFG_OUTPUT exists; its owner is left as it is (user $DS_USER must be able to write it)"
    else
        ds_mkdir "$out" 0755
        ds_run user chown "$DS_USER:$DS_USER" "$out"
    fi
    ds_mkdir "$(ds_rp "$DS_STATE_DIR")" 0750
    ds_mkdir "$(ds_rp "$DS_CACHE_DIR")" 0750
    ds_run user chown "$DS_USER:$DS_USER" "$(ds_rp "$DS_STATE_DIR")" "$(ds_rp "$DS_CACHE_DIR")"
}

ds_venv_python() { printf '%s/bin/python' "$(ds_rp "$DS_VENV")"; }
ds_venv_dermsort() { printf '%s/bin/dermsort' "$(ds_rp "$DS_VENV")"; }

ds_create_venv() { # SYSTEM_SITE_PACKAGES (0|1)
    local flags=()
    (($1)) && flags+=(--system-site-packages)
    ds_run pip "$DS_PYTHON" -m venv ${flags[@]+"${flags[@]}"} "$(ds_rp "$DS_VENV")"
}

ds_pip_install() { # REQUIREMENT...
    ds_run pip "$(ds_venv_python)" -m pip install --disable-pip-version-check "$@"
}

# The venv must hold exactly one ONNX Runtime build: onnxruntime, onnxruntime-gpu (and NVIDIA's
# Jetson build of it) install the same import name and shadow each other, and pip check does not see
# that. Then pip check: a problem that involves dermsort or ONNX Runtime stops the install; others
# only warn (a --system-site-packages venv also sees the system's packages, not ours to fix).
DS_ORT_COUNT='import importlib.metadata as m
names = sorted({(d.metadata["Name"] or "").lower() for d in m.distributions()} & {"onnxruntime", "onnxruntime-gpu"})
print(" ".join(names) or "none")'

ds_pip_check() {
    local report found
    if ((DS_DRY_RUN)) || [[ -n $(ds_skip_reason pip) ]]; then
        ds_run pip "$(ds_venv_python)" -c "$DS_ORT_COUNT"
        ds_run pip "$(ds_venv_python)" -m pip check --disable-pip-version-check
        return 0
    fi
    found=$("$(ds_venv_python)" -c "$DS_ORT_COUNT") || ds_die "the venv's python does not run: $(ds_venv_python)"
    case $found in
        onnxruntime | onnxruntime-gpu) ds_log "ONNX Runtime in the venv: $found" ;;
        none) ds_die "no ONNX Runtime in the venv $DS_VENV: install dermsort[cpu] or dermsort[gpu]" ;;
        *) ds_die "both $found are installed in $DS_VENV: they shadow each other; remove the venv and install again" ;;
    esac
    printf '+ %s\n' "$(ds_quote "$(ds_venv_python)" -m pip check --disable-pip-version-check)"
    if report=$("$(ds_venv_python)" -m pip check --disable-pip-version-check 2>&1); then
        printf '%s\n' "$report"
        return 0
    fi
    report=$(tr '\n' ';' <<<"$report")
    if grep -qiE 'dermsort|onnxruntime' <<<"$report"; then
        ds_die "pip check failed on dermsort's requirements: $report"
    fi
    ds_warn "pip check reports problems outside dermsort, left as they are: $report"
}

ds_check_source() {
    [[ -e ${DS_SOURCE%%\[*} ]] || ds_die "--source $DS_SOURCE not found (a dermsort checkout or a .whl file)"
}

# Sets DS_BUNDLE: the configured bundle, or the default model inside the installed package.
ds_resolve_bundle() {
    local reason find_default=(
        "$(ds_venv_python)" -c
        'import pathlib, dermsort.runtime as r; print(pathlib.Path(r.__file__).parent / "models" / "default")')
    if [[ -n $CFG_MODEL ]]; then
        DS_BUNDLE=$(ds_rp "$CFG_MODEL")
        return 0
    fi
    reason=$(ds_skip_reason dermsort)
    if ((DS_DRY_RUN)) || [[ -n $reason ]]; then
        DS_BUNDLE="<default bundle inside $(ds_rp "$DS_VENV")>"
        ds_run dermsort "${find_default[@]}"
        return 0
    fi
    printf '+ %s\n' "$(ds_quote "${find_default[@]}")"
    DS_BUNDLE=$("${find_default[@]}")
}

# dermsort bench once, as the profile for --backend auto; same cache folder as the service.
ds_run_bench() {
    if [[ -z $DS_BENCH_DATA ]]; then
        ds_log "no --bench-data: not running dermsort bench; --backend auto will time a short probe on first start instead"
        return 0
    fi
    [[ $DS_BENCH_DATA == /* && $DS_BENCH_OUT == /* ]] || ds_die "--bench-data and --bench-out need absolute paths"
    [[ -d $(ds_rp "$DS_BENCH_DATA") ]] || ds_die "--bench-data $DS_BENCH_DATA is not a folder"
    ds_mkdir "$(ds_rp "$DS_BENCH_OUT")" 0750
    ds_run dermsort env "HOME=$(ds_rp "$DS_STATE_DIR")" "DERMSORT_CACHE_DIR=$(ds_rp "$DS_CACHE_DIR")" \
        "$(ds_venv_dermsort)" bench "$DS_BUNDLE" --data "$(ds_rp "$DS_BENCH_DATA")" --out "$(ds_rp "$DS_BENCH_OUT")"
    ds_run user chown -R "$DS_USER:$DS_USER" "$(ds_rp "$DS_STATE_DIR")" "$(ds_rp "$DS_CACHE_DIR")"
}

ds_install_service() { # EXTRA_SERVICE_LINES
    ds_copy_file "$DS_DEPLOY_DIR/common.sh" "$(ds_rp "$DS_LIB")" 0644
    ds_copy_file "$DS_DEPLOY_DIR/dermsort-service.sh" "$(ds_rp "$DS_WRAPPER")" 0755
    ds_render_unit "$1" | ds_write_file "$(ds_rp "$DS_UNIT")" 0644
    ds_render_dropin | ds_write_file "$(ds_rp "$DS_DROPIN")" 0644
    if [[ $DS_ROOT == / && ! -d /run/systemd/system && -z $(ds_skip_reason systemctl) ]]; then
        # sd_booted(): no systemd as PID 1 here (a chroot or container preparing an image, e.g. an
        # SD card): systemctl cannot reload or start anything; enable the unit in the file system so
        # it starts at the next boot
        ds_warn "systemd is not running on this system (chroot or container?): enabling $DS_UNIT_NAME for the next boot, not starting it now"
        ds_run systemctl systemctl --root=/ enable "$DS_UNIT_NAME"
    elif [[ $DS_ROOT == / ]]; then
        ds_run systemctl systemctl daemon-reload
        ds_run systemctl systemctl enable "$DS_UNIT_NAME"
        if ((DS_START)); then
            ds_run systemctl systemctl restart "$DS_UNIT_NAME"
        else
            ds_log "--no-start: start it with: sudo systemctl start dermsort"
        fi
    else
        ds_run systemctl systemctl "--root=$DS_ROOT" enable "$DS_UNIT_NAME"
        ds_log "--root is not /: not reloading or starting systemd"
    fi
}

ds_install_summary() {
    cat <<EOF
$DS_PROG: done$( ((DS_DRY_RUN)) && printf ' (dry run: nothing was changed)').
  config:   $DS_CONFIG   (input $CFG_INPUT, output $CFG_OUTPUT, mode $CFG_MODE, backend $CFG_BACKEND)
  service:  systemctl status dermsort      logs: journalctl -u dermsort -f
  uninstall: $(dirname -- "$0")/uninstall.sh
EOF
}

# ---------------------------------------------------------------- uninstall

ds_uninstall_usage() {
    cat <<EOF
usage: $1 [options]

Stops and disables $DS_UNIT_NAME and removes the venv, the unit and the wrapper.
Keeps $DS_CONFIG. Never deletes an image: the input folder is not touched at all.

  --venv DIR                   the venv to remove (default $DS_VENV)
  --remove-config              also remove /etc/dermsort
  --remove-state               also remove $DS_STATE_DIR and $DS_CACHE_DIR (bench
                               reports, machine profile; never if an image folder is inside)
  --remove-user                also delete the system user $DS_USER
  --remove-empty-output-dirs   rmdir OUTPUT/benign, OUTPUT/review and OUTPUT if they are empty
  --dry-run                    print every action, do nothing
  --root DIR                   operate on DIR as the file-system root
  -h, --help                   this help
EOF
}

ds_uninstall_main() { # DEVICE_NAME ARGS...
    local name=$1 remove_config=0 remove_state=0 remove_user=0 remove_output_dirs=0 cfg out sub
    shift
    while (($#)); do
        if ds_parse_common_option "$@"; then shift "$DS_SHIFT"; continue; fi
        case $1 in
            --remove-config) remove_config=1 ;;
            --remove-state) remove_state=1 ;;
            --remove-user) remove_user=1 ;;
            --remove-empty-output-dirs) remove_output_dirs=1 ;;
            -h | --help) ds_uninstall_usage "$0"; exit 0 ;;
            *) ds_die "unknown option $1 (see --help)" ;;
        esac
        shift
    done
    ds_require_privileges
    ds_log "uninstalling dermsort ($name)$( ((DS_DRY_RUN)) && printf ' [dry run]')"

    ds_config_defaults
    CFG_OUTPUT=""
    cfg=$(ds_rp "$DS_CONFIG")
    [[ -f $cfg ]] && ds_load_config "$cfg"

    if [[ $DS_ROOT == / ]]; then
        if [[ -e $(ds_rp "$DS_UNIT") ]]; then
            ds_run systemctl systemctl disable --now "$DS_UNIT_NAME"
        fi
    else
        ds_run systemctl systemctl "--root=$DS_ROOT" disable "$DS_UNIT_NAME"
    fi
    ds_remove_file "$(ds_rp "$DS_UNIT")"
    ds_remove_file "$(ds_rp "$DS_DROPIN")"
    ds_rmdir_if_empty "$(dirname -- "$(ds_rp "$DS_DROPIN")")"
    [[ $DS_ROOT == / ]] && ds_run systemctl systemctl daemon-reload
    ds_remove_file "$(ds_rp "$DS_WRAPPER")"
    ds_remove_file "$(ds_rp "$DS_LIB")"
    ds_remove_tree "$(ds_rp "$DS_VENV")" pyvenv.cfg
    ds_rmdir_if_empty "$(ds_rp "$DS_PREFIX/bin")"
    ds_rmdir_if_empty "$(ds_rp "$DS_PREFIX/lib")"
    ds_rmdir_if_empty "$(ds_rp "$DS_PREFIX")"

    if ((remove_state)); then
        ds_remove_tree "$(ds_rp "$DS_STATE_DIR")" ""
        ds_remove_tree "$(ds_rp "$DS_CACHE_DIR")" ""
    fi
    if ((remove_config)); then
        ds_remove_file "$cfg"
        ds_rmdir_if_empty "$(dirname -- "$cfg")"
    elif [[ -f $cfg ]]; then
        ds_log "kept $cfg (pass --remove-config to remove it)"
    fi
    if ((remove_user)); then
        if [[ $DS_ROOT != / ]] || getent passwd "$DS_USER" >/dev/null; then ds_run user userdel "$DS_USER"; fi
    fi
    if ((remove_output_dirs)); then
        if [[ -z $CFG_OUTPUT ]]; then
            ds_warn "no DERMSORT_OUTPUT in $cfg: no output folders to tidy"
        else
            out=$(ds_rp "$CFG_OUTPUT")
            for sub in benign review; do ds_rmdir_if_empty "$out/$sub"; done
            ds_rmdir_if_empty "$out"
        fi
    fi
    if [[ -n $CFG_INPUT$CFG_OUTPUT ]]; then
        ds_log "images left untouched in:${CFG_INPUT:+ $CFG_INPUT}${CFG_OUTPUT:+ $CFG_OUTPUT}"
    else
        ds_log "no config found, so no image folder was looked at"
    fi
    [[ -n $CFG_MODEL ]] && ds_log "TensorRT engines built into $CFG_MODEL (if any) were left there"
    return 0
}
