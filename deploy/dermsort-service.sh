#!/usr/bin/env bash
# dermsort-service: what the systemd unit (and the Jetson container) runs. Installed as
# /opt/dermsort/bin/dermsort-service. Reads /etc/dermsort/dermsort.conf (variables already in the
# environment win, e.g. from systemd's EnvironmentFile or `docker run -e`), checks it, and replaces
# itself with
#   dermsort watch INPUT --out OUTPUT [--move] [--model MODEL] --backend BACKEND [EXTRA_ARGS...]
# so that systemd's SIGTERM reaches `dermsort watch` directly and it stops after the current batch.
# A configuration problem exits 78 with one line on stderr; the unit does not restart on 78.
#
# usage: dermsort-service [--dry-run] [--root DIR | --config FILE]
#   --dry-run   check the config and print the command instead of running it
#   --root DIR  read DIR/etc/dermsort/dermsort.conf (the image folders are used as configured)
set -euo pipefail

ds_here=$(cd -- "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")" && pwd)
ds_lib=""
for ds_candidate in "$ds_here/../lib/dermsort-common.sh" "$ds_here/common.sh"; do
    if [[ -r $ds_candidate ]]; then ds_lib=$ds_candidate; break; fi
done
if [[ -z $ds_lib ]]; then
    echo "dermsort-service: error: dermsort-common.sh not found beside $ds_here; reinstall dermsort" >&2
    exit 78
fi
# shellcheck source=common.sh
. "$ds_lib"

DS_PROG=dermsort-service
DS_DIE_STATUS=$DS_EX_CONFIG
config=${DERMSORT_CONFIG:-$DS_CONFIG}

while (($#)); do
    case $1 in
        --dry-run) DS_DRY_RUN=1; shift ;;
        --root) ds_need_arg "$@"; DS_ROOT=$2; config=$(ds_rp "$DS_CONFIG"); shift 2 ;;
        --config) ds_need_arg "$@"; config=$2; shift 2 ;;
        -h | --help) sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) ds_die "unknown option $1 (see --help)" ;;
    esac
done

ds_config_defaults
CFG_OUTPUT=""
if [[ -f $config ]]; then
    ds_load_config "$config"
elif [[ -z ${DERMSORT_INPUT:-} ]]; then
    ds_die "config file $config not found and DERMSORT_INPUT is not set; reinstall, or create the config"
fi
for key in "${DS_CONFIG_KEYS[@]}"; do
    if [[ -n ${!key+set} ]]; then ds_set_config_key "$key" "${!key}"; fi
done
ds_validate_config

me=$(id -un 2>/dev/null || id -u)
[[ -d $CFG_INPUT ]] ||
    ds_die "input folder DERMSORT_INPUT=$CFG_INPUT does not exist or is not a folder (is the dermatoscope's share mounted? see $config)"
[[ -r $CFG_INPUT && -x $CFG_INPUT ]] || ds_die "input folder $CFG_INPUT is not readable by user $me"
if [[ $CFG_MODE == move && ! -w $CFG_INPUT ]]; then
    ds_die "DERMSORT_MODE=move needs write access to the input folder $CFG_INPUT for user $me"
fi
[[ -d $CFG_OUTPUT ]] ||
    ds_die "output folder DERMSORT_OUTPUT=$CFG_OUTPUT does not exist; create it for user $me, or run the installer with --reconfigure"
[[ -w $CFG_OUTPUT && -x $CFG_OUTPUT ]] || ds_die "output folder $CFG_OUTPUT is not writable by user $me"
# Again on the real paths: a symlink must not smuggle the output into the watched folder.
real_input=$(cd -- "$CFG_INPUT" && pwd -P)
real_output=$(cd -- "$CFG_OUTPUT" && pwd -P)
if ds_is_inside "$real_output" "$real_input"; then
    ds_die "output folder $CFG_OUTPUT ($real_output) is inside the input folder $CFG_INPUT ($real_input): choose an output folder outside the input"
fi
if [[ -n $CFG_MODEL && ! -e $CFG_MODEL ]]; then
    ds_die "model bundle DERMSORT_MODEL=$CFG_MODEL not found"
fi
# Outside systemd (sudo -u dermsort ... --dry-run) PATH may lack the venv: try the default one.
if ! command -v dermsort >/dev/null && [[ -x $DS_VENV/bin/dermsort ]]; then PATH=$DS_VENV/bin:$PATH; fi
command -v dermsort >/dev/null || ds_die "the dermsort command is not on PATH ($PATH); reinstall dermsort"

argv=(dermsort watch "$CFG_INPUT" --out "$CFG_OUTPUT")
[[ $CFG_MODE == move ]] && argv+=(--move)
[[ -n $CFG_MODEL ]] && argv+=(--model "$CFG_MODEL")
argv+=(--backend "$CFG_BACKEND")
read -r -a extra_args <<<"$CFG_EXTRA_ARGS"
argv+=(${extra_args[@]+"${extra_args[@]}"})

if ((DS_DRY_RUN)); then
    ds_log "would exec: $(ds_quote "${argv[@]}")"
    exit 0
fi
ds_log "exec: $(ds_quote "${argv[@]}")"
exec "${argv[@]}"
