#!/usr/bin/env bash
# The Raspberry Pi path, run for real on an arm64 Debian 12 (bookworm) userland - what Raspberry Pi
# OS 64-bit is built on - under qemu user-mode emulation on an x86-64 machine.
#
#   sudo deploy/raspi/check-arm64.sh [--root CACHE] [--images N] [--out REPORT] [--with-openvino]
#
# 1. emulation: mounts binfmt_misc if absent and registers qemu-aarch64 (update-binfmts); when this
#    machine cannot run arm64 binaries it prints one "SKIP: reason" line and exits 77;
# 2. root file system: debootstrap --arch=arm64 bookworm into CACHE/base once (mirror: the first
#    Debian mirror in this machine's apt sources), then a fresh copy CACHE/run for every check;
# 3. copies this checkout (tracked and untracked, not ignored, files) to /home/pi/dermsort and N real
#    images from ../shared/data to /srv/dermatoscope, and runs deploy/raspi/install.sh there as root,
#    as a Pi user would (venv under /opt/dermsort; pip reaches the registry through the host's
#    resolv.conf, pip configuration and CA bundle, copied in);
# 4. systemd cannot run in a chroot: `systemd-analyze verify` checks the installed unit, and the
#    unit's ExecStart runs directly as user dermsort with the unit's Environment= and
#    EnvironmentFile= values: `dermsort watch` sorts the N images, then gets SIGTERM;
# 5. compares every decision and p(malignant) with `dermsort sort` of the same images on this x86
#    machine (same bundle, onnxruntime, fp32): decisions must be identical and |p_arm64 - p_x86| <=
#    --tolerance (default 1e-4); runs `dermsort info` in the root; writes a report (--out).
#
# Exit status: 0 passed, 1 failed (one line saying why), 77 skipped (emulation unavailable).
# Timings in the report are EMULATED (qemu on x86): they are not Raspberry Pi timings.
set -euo pipefail

DS_DEPLOY_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
DS_PROG=dermsort-check-arm64
# shellcheck source=../common.sh
. "$DS_DEPLOY_DIR/common.sh"

REPO=$(cd -- "$DS_DEPLOY_DIR/.." && pwd)
EXIT_SKIP=77
CACHE=${DERMSORT_ARM64_CACHE:-/var/cache/dermsort-arm64}
# test hook: where binfmt_misc is (or is not) mounted
BINFMT_DIR=${DERMSORT_BINFMT_DIR:-/proc/sys/fs/binfmt_misc}
DATA=$(cd -- "$REPO/.." && pwd)/shared/data
N_IMAGES=24
TOLERANCE=1e-4
REPORT=""
X86_DERMSORT=""
WITH_OPENVINO=0
WATCH_LIMIT_S=3600
# the CPU qemu emulates: Raspberry Pi 4's core (ARMv8.0-A, NEON, no SVE; Pi 5's Cortex-A76 adds
# dotprod and FP16). qemu's default "max" CPU has SVE, which no Pi has.
QEMU_CPU=${DERMSORT_QEMU_CPU:-cortex-a72}
SUITE=bookworm

usage() {
    cat <<EOF
usage: $0 [options]

Installs and runs dermsort on an emulated arm64 Debian 12 root (see the comment at the top of
this script) and compares its decisions with this x86 machine's. Needs root, qemu-user-static,
binfmt-support and debootstrap (apt-get install qemu-user-static binfmt-support debootstrap),
and the package registries (Debian's, PyPI) for the first build of the root and for pip.

  --root DIR            cache folder: DIR/base is the arm64 root file system (built once),
                        DIR/run the copy each check installs into (default $CACHE,
                        or \$DERMSORT_ARM64_CACHE)
  --images N            real images to sort (default $N_IMAGES, at least 20)
  --data DIR            the shared data folder (default $DATA)
  --tolerance P         largest |p_arm64 - p_x86| allowed (default $TOLERANCE)
  --x86-dermsort PATH   dermsort on this machine for the x86 side (default: dermsort on PATH)
  --with-openvino       install with --with-openvino too (OpenVINO's aarch64 wheel) and compare
                        the openvino-fp16 decisions as well
  --out FILE            also write the report to FILE
  --dry-run             check the prerequisites, print the plan, change nothing
  -h, --help            this help
EOF
}

skip() {
    printf '%s: SKIP: %s\n' "$DS_PROG" "$*" >&2
    exit "$EXIT_SKIP"
}

say() { printf '%s: %s\n' "$DS_PROG" "$*" | tee -a "$LOG" >&2; }

# ------------------------------------------------------------------ prerequisites

check_emulation() {
    local arch
    arch=$(uname -m)
    if [[ $arch == aarch64 ]]; then
        EMULATED="no (native aarch64 host)"
        return 0
    fi
    [[ $arch == x86_64 ]] || skip "host is $arch; this check runs arm64 under emulation on x86_64 only"
    if [[ ! -e $BINFMT_DIR/status ]]; then
        if ! mount -t binfmt_misc binfmt_misc "$BINFMT_DIR" 2>/dev/null || [[ ! -e $BINFMT_DIR/status ]]; then
            skip "binfmt_misc is not available ($BINFMT_DIR is not mounted and cannot be mounted here): this machine cannot run arm64 binaries, so the arm64 check cannot run"
        fi
    fi
    ((EUID == 0)) || skip "needs root (debootstrap, chroot, mount); run it with sudo"
    local tool
    for tool in debootstrap update-binfmts chroot; do
        command -v "$tool" >/dev/null ||
            skip "$tool not found: apt-get install qemu-user-static binfmt-support debootstrap"
    done
    if [[ ! -e $BINFMT_DIR/qemu-aarch64 ]]; then
        update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
    fi
    grep -qsx enabled "$BINFMT_DIR/qemu-aarch64" ||
        skip "qemu-aarch64 is not registered in $BINFMT_DIR (apt-get install qemu-user-static binfmt-support; update-binfmts --enable qemu-aarch64)"
    EMULATED="yes: $(qemu-aarch64-static --version 2>/dev/null | head -n 1 || echo qemu-aarch64), CPU model $QEMU_CPU"
    export QEMU_CPU
}

# The first Debian mirror in this machine's apt sources (deb822 .sources or one-line .list).
host_mirror() {
    local uri
    uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
        awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }')
    if [[ -z $uri ]]; then
        uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
            awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^(https?|file):/ && $i ~ /\/debian\/?$/) { print $i; exit } }')
    fi
    printf '%s' "${uri:-http://deb.debian.org/debian}"
}

# ------------------------------------------------------------------ the arm64 root

unmount_run() {
    local mp
    [[ -d $RUN ]] || return 0
    # deepest first; never leave a bind mount of /dev behind a later rm -rf
    while read -r mp; do
        umount -l "$mp" 2>/dev/null || true
    done < <(awk -v run="$RUN/" 'index($2, run) == 1 { print $2 }' /proc/mounts | sort -r)
}

ensure_base() {
    local mirror
    if [[ -f $BASE/.dermsort-base-ok ]]; then
        say "reusing the arm64 root in $BASE"
        return 0
    fi
    mirror=$(host_mirror)
    say "building the arm64 $SUITE root in $BASE from $mirror (debootstrap, minutes)"
    rm -rf --one-file-system -- "$BASE.tmp"
    nice -n 15 debootstrap --arch=arm64 --variant=minbase --include=python3,ca-certificates,systemd \
        "$SUITE" "$BASE.tmp" "$mirror" >>"$LOG" 2>&1 || ds_die "debootstrap failed; see $LOG"
    touch "$BASE.tmp/.dermsort-base-ok"
    mv -- "$BASE.tmp" "$BASE"
}

fresh_run_root() {
    local file
    unmount_run
    rm -rf --one-file-system -- "$RUN"
    cp -a -- "$BASE" "$RUN"
    mkdir -p "$RUN/proc" "$RUN/dev" "$CACHE/pip-cache" "$RUN/var/cache/pip-host"
    # no /sys here: under qemu-user it would be the x86 host's, and ONNX Runtime's cpuinfo crashes
    # on that (SIGSEGV); without it, it warns and falls back. OpenVINO needs one: see main.
    mount -t proc proc "$RUN/proc"
    mount --bind /dev "$RUN/dev"
    if [[ -d /dev/pts ]]; then mount --bind /dev/pts "$RUN/dev/pts"; fi
    # pip's downloads survive between checks (the root itself is fresh each time)
    mount --bind "$CACHE/pip-cache" "$RUN/var/cache/pip-host"
    cp -L /etc/resolv.conf "$RUN/etc/resolv.conf"
    # the host's CA bundle, so pip trusts the same registry (and any proxy) as this machine
    if [[ -r /etc/ssl/certs/ca-certificates.crt ]]; then
        cp -L /etc/ssl/certs/ca-certificates.crt "$RUN/etc/ssl/certs/ca-certificates.crt"
    fi
    for file in /etc/pip.conf /etc/xdg/pip/pip.conf /etc/xdg/pip/constraints.txt; do
        if [[ -r $file ]]; then
            mkdir -p "$RUN$(dirname -- "$file")"
            cp -L "$file" "$RUN$file"
        fi
    done
}

# ROOT_ENV: the environment of commands in the arm64 root: the host's PIP_*/proxy settings, nothing else.
root_env() {
    local name
    ROOT_ENV=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
        PIP_CACHE_DIR=/var/cache/pip-host DEBIAN_FRONTEND=noninteractive)
    # every arm64 exec starts a new qemu, which reads QEMU_CPU from that process's environment
    [[ $EMULATED == yes* ]] && ROOT_ENV+=("QEMU_CPU=$QEMU_CPU")
    while IFS= read -r name; do
        case $name in
            PIP_FIND_LINKS | PIP_CACHE_DIR) ;; # host-only paths
            PIP_* | http_proxy | https_proxy | no_proxy | HTTP_PROXY | HTTPS_PROXY | NO_PROXY) ROOT_ENV+=("$name=${!name}") ;;
        esac
    done < <(compgen -e)
}

# Run a command in the arm64 root as root, niced (emulated CPU work shares this machine).
in_root() {
    nice -n 15 chroot "$RUN" /usr/bin/env -i "${ROOT_ENV[@]}" "$@"
}

# ------------------------------------------------------------------ images and the x86 side

pick_images() { # N real images: the test split of several data sets in turn, one of each per round
    local sets=(ham10000-sample ph2 isic2020 isic2019 kaggle-melanoma-sample) set
    local lists=() i round=0 count=0
    for set in "${sets[@]}"; do
        [[ -r $DATA/$set/labels.csv ]] || continue
        lists+=("$set")
    done
    ((${#lists[@]})) || ds_die "no labelled data sets under $DATA (expected ../shared/data beside the repository)"
    IMAGE_PATHS=()
    while ((count < N_IMAGES)) && ((round < 200)); do
        for set in "${lists[@]}"; do
            ((count < N_IMAGES)) || break
            i=$(python3 - "$DATA/$set/labels.csv" "$round" <<'EOF'
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1], newline="")) if r.get("split") == "test"]
k = int(sys.argv[2])
print(rows[k]["file"] if k < len(rows) else "")
EOF
)
            [[ -n $i ]] || continue
            IMAGE_PATHS+=("$DATA/$set/$i")
            count=$((count + 1))
        done
        round=$((round + 1))
    done
    ((count >= N_IMAGES)) || ds_die "found only $count test images under $DATA"
}

# ------------------------------------------------------------------ main

main() {
    local dry=0
    while (($#)); do
        case $1 in
            --root) ds_need_arg "$@"; CACHE=$2; shift 2 ;;
            --images) ds_need_arg "$@"; N_IMAGES=$2; shift 2 ;;
            --data) ds_need_arg "$@"; DATA=$2; shift 2 ;;
            --tolerance) ds_need_arg "$@"; TOLERANCE=$2; shift 2 ;;
            --x86-dermsort) ds_need_arg "$@"; X86_DERMSORT=$2; shift 2 ;;
            --with-openvino) WITH_OPENVINO=1; shift ;;
            --out) ds_need_arg "$@"; REPORT=$2; shift 2 ;;
            --dry-run) dry=1; shift ;;
            -h | --help) usage; exit 0 ;;
            *) ds_die "unknown option $1 (see --help)" ;;
        esac
    done
    if [[ ! $N_IMAGES =~ ^[0-9]+$ ]] || ((N_IMAGES < 20)); then
        ds_die "--images must be at least 20 (got $N_IMAGES)"
    fi
    [[ $CACHE == /* ]] || ds_die "--root needs an absolute path"
    check_emulation
    X86_DERMSORT=${X86_DERMSORT:-$(command -v dermsort || true)}
    [[ -n $X86_DERMSORT && -x $X86_DERMSORT ]] ||
        ds_die "no dermsort on this machine for the x86 side: pip install '.[cpu]' or pass --x86-dermsort PATH"
    BASE=$CACHE/base
    RUN=$CACHE/run
    pick_images
    if ((dry)); then
        printf '[dry-run] emulation: %s\n' "$EMULATED"
        printf '[dry-run] arm64 root: %s (%s), fresh copy in %s\n' "$BASE" \
            "$([[ -f $BASE/.dermsort-base-ok ]] && echo cached || echo "debootstrap from $(host_mirror)")" "$RUN"
        printf '[dry-run] install: deploy/raspi/install.sh --input /srv/dermatoscope --backend onnxruntime%s\n' \
            "$( ((WITH_OPENVINO)) && printf ' --with-openvino')"
        printf '[dry-run] images: %s\n' "${IMAGE_PATHS[@]}"
        printf '[dry-run] x86 side: %s sort ... --backend onnxruntime --precision fp32\n' "$X86_DERMSORT"
        exit 0
    fi
    mkdir -p "$CACHE"
    WORK=$(mktemp -d "$CACHE/check.XXXXXX")
    LOG=$WORK/check.log
    : >"$LOG"
    trap 'unmount_run' EXIT
    local started t0 t_install t_watch
    started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    ensure_base
    fresh_run_root
    root_env
    [[ $(in_root uname -m) == aarch64 ]] || ds_die "the root does not run as aarch64 (uname -m in it: $(in_root uname -m))"

    # the project as a user would have it (git checkout), and the images the dermatoscope exported
    mkdir -p "$RUN/home/pi/dermsort" "$RUN/srv/dermatoscope" "$WORK/x86-in"
    CHECKOUT="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet HEAD 2>/dev/null || echo ' + uncommitted changes')"
    (cd "$REPO" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf -) |
        tar -xf - -C "$RUN/home/pi/dermsort"
    cp -- "${IMAGE_PATHS[@]}" "$RUN/srv/dermatoscope/"
    cp -- "${IMAGE_PATHS[@]}" "$WORK/x86-in/"
    chmod 0644 "$RUN/srv/dermatoscope/"*

    say "x86: dermsort sort of ${#IMAGE_PATHS[@]} images (onnxruntime, fp32)"
    "$X86_DERMSORT" sort "$WORK/x86-in" --out "$WORK/x86-out" --backend onnxruntime --precision fp32 \
        >>"$LOG" 2>&1 || ds_die "dermsort sort failed on x86; see $LOG"
    if ((WITH_OPENVINO)); then
        "$X86_DERMSORT" sort "$WORK/x86-in" --out "$WORK/x86-out-ov" --backend openvino --precision fp16 \
            >>"$LOG" 2>&1 || ds_die "dermsort sort --backend openvino failed on x86; see $LOG"
    fi

    say "arm64: deploy/raspi/install.sh as root (emulated: slow)"
    t0=$SECONDS
    local ov_flag=()
    ((WITH_OPENVINO)) && ov_flag=(--with-openvino)
    if ! in_root /bin/bash -c 'cd /home/pi/dermsort/deploy/raspi && ./install.sh --input /srv/dermatoscope \
            --output /srv/dermsort/sorted --backend onnxruntime --extra-args "--precision fp32" "$@"' \
            install "${ov_flag[@]+"${ov_flag[@]}"}" >"$WORK/install.log" 2>&1; then
        cat "$WORK/install.log" >>"$LOG"
        ds_die "install.sh failed in the arm64 root: $(tail -n 1 "$WORK/install.log")"
    fi
    t_install=$((SECONDS - t0))

    local verify_rc=0
    in_root systemd-analyze verify /etc/systemd/system/dermsort.service >"$WORK/verify.log" 2>&1 || verify_rc=$?
    in_root /opt/dermsort/venv/bin/dermsort info >"$WORK/info.log" 2>&1 || ds_die "dermsort info failed: $(tail -n 1 "$WORK/info.log")"
    in_root /opt/dermsort/venv/bin/python -c '
import importlib.metadata as m, platform, sys
print("python", platform.python_version(), platform.machine())
for name in ("dermsort", "numpy", "pillow", "click", "onnxruntime", "openvino"):
    try:
        dist = m.distribution(name)
    except m.PackageNotFoundError:
        continue
    tags = [l.split(": ", 1)[1] for l in (dist.read_text("WHEEL") or "").splitlines() if l.startswith("Tag: ")]
    print(name, dist.version, " ".join(tags) or "(built from source)")' >"$WORK/versions.log" 2>&1
    local pipcheck_rc=0
    in_root /opt/dermsort/venv/bin/python -m pip check >"$WORK/pipcheck.log" 2>&1 || pipcheck_rc=$?

    # the service's command, as systemd would start it: ExecStart as User= with Environment= and
    # EnvironmentFile= (systemd cannot run in a chroot)
    say "arm64: the unit's ExecStart (dermsort watch) until it has sorted ${#IMAGE_PATHS[@]} images"
    local unit=$RUN/etc/systemd/system/dermsort.service exec_start envs=() line user
    exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
    user=$(sed -n 's/^User=//p' "$unit")
    while IFS= read -r line; do envs+=("${line#Environment=}"); done < <(grep '^Environment=' "$unit")
    while IFS= read -r line; do envs+=("$line"); done < <(ds_parse_env_file "$RUN/etc/dermsort/dermsort.conf")
    [[ $EMULATED == yes* ]] && envs+=("QEMU_CPU=$QEMU_CPU")
    t0=$SECONDS
    # nice, chroot, env and setpriv exec in turn: $! ends up as timeout, which passes SIGTERM on to
    # the wrapper, which execs dermsort watch
    nice -n 15 chroot "$RUN" /usr/bin/setpriv --reuid="$user" --regid="$user" --init-groups \
        /usr/bin/env -i "${envs[@]}" /usr/bin/timeout --signal=TERM "$WATCH_LIMIT_S" "$exec_start" \
        >"$WORK/watch.log" 2>&1 &
    local watch_pid=$! done_rows=0
    while kill -0 "$watch_pid" 2>/dev/null; do
        done_rows=0
        if [[ -f $RUN/srv/dermsort/sorted/results.csv ]]; then
            done_rows=$(($(wc -l <"$RUN/srv/dermsort/sorted/results.csv") - 1))
        fi
        ((done_rows >= ${#IMAGE_PATHS[@]})) && break
        sleep 5
    done
    t_watch=$((SECONDS - t0))
    # SIGTERM, as systemctl stop sends: the watcher finishes its batch and exits 0 (README: exit codes)
    kill -TERM "$watch_pid" 2>/dev/null || true
    local watch_rc=0
    wait "$watch_pid" || watch_rc=$?
    cp "$RUN/srv/dermsort/sorted/results.csv" "$WORK/arm64-results.csv" 2>/dev/null ||
        ds_die "the service's command wrote no results.csv; see $WORK/watch.log: $(tail -n 1 "$WORK/watch.log")"
    # the bundled verification set (export/verify_set.py) on arm64: the FP32 reference must reproduce
    # the decisions and p stored at export (x86), and the FP16 artifact must agree with them. Not the
    # OpenVINO artifacts: the check runs the reference with ONNX Runtime, which needs no /sys here,
    # in the same process as OpenVINO, which needs one (see the OpenVINO step)
    local vset_rc=0 vset_cmd
    # shellcheck disable=SC2016 # expanded by the bash in the arm64 root
    vset_cmd='py=/opt/dermsort/venv/bin/python
        bundle=$("$py" -c "from dermsort.runtime.bundle import DEFAULT_BUNDLE; print(DEFAULT_BUNDLE)")
        "$py" -m dermsort.export.verify_set check "$bundle" "$@"'
    in_root /bin/bash -c "$vset_cmd" vset --artifact onnx-fp16 >"$WORK/vset.log" 2>&1 || vset_rc=$?
    local ov_rc=0
    if ((WITH_OPENVINO)); then
        # OpenVINO's CPU plugin (hwloc) crashes without a /sys: give it the host's for this step only
        # (an emulation artefact both ways: a Pi has its own ARM /sys, which both runtimes read)
        mkdir -p "$RUN/sys"
        mount --bind /sys "$RUN/sys"
        in_root /opt/dermsort/venv/bin/dermsort sort /srv/dermatoscope --out /root/ov-out --backend openvino \
            --precision fp16 >"$WORK/ov.log" 2>&1 || ov_rc=$?
        umount "$RUN/sys"
        cp "$RUN/root/ov-out/results.csv" "$WORK/arm64-ov-results.csv" 2>/dev/null || true
    fi

    write_report "$started" "$t_install" "$t_watch" "$verify_rc" "$pipcheck_rc" "$watch_rc" "$ov_rc" "$vset_rc"
}

# ONNX Runtime's cpuinfo cannot read the CPU under emulation (no /sys) and says so on every start;
# the report keeps one count of those lines instead of the lines
quiet() {
    local noise='^(Error in cpuinfo|onnxruntime (cpuid_info )?warning: .*cpuinfo|.*Can.t open MIDR_EL1)'
    grep -v -E "$noise" "$1" || true
    printf '(%s line(s) of cpuinfo warnings under emulation omitted)\n' "$(grep -c -E "$noise" "$1" || true)"
}

# argv: x86 results.csv, arm64 results.csv, tolerance, what, expected count, how arm64 sorted.
# Exit 1 on any difference.
COMPARE_PY=$(cat <<'EOF'
import csv, os, sys
x86_csv, arm_csv, tol, what, n, how = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], int(sys.argv[5]), sys.argv[6]
def rows(path):
    with open(path, newline="") as fh:
        return {os.path.basename(r["file"]): r for r in csv.DictReader(fh)}
x86, arm = rows(x86_csv), rows(arm_csv)
print(f"== decisions and p(malignant), {what}: arm64 vs x86 (dermsort sort on x86; on arm64 {how})")
print(f"{'image':34s} {'x86 p':>9s} {'arm64 p':>9s} {'|diff|':>9s}  x86     arm64   artifact")
bad, worst = [], 0.0
for name in sorted(x86):
    a, b = x86[name], arm.get(name)
    if b is None:
        bad.append(f"{name}: not sorted on arm64")
        continue
    pa, pb = float(a["p_malignant"]), float(b["p_malignant"])
    diff = abs(pa - pb)
    worst = max(worst, diff)
    print(f"{name[:34]:34s} {pa:9.6f} {pb:9.6f} {diff:9.2e}  {a['decision']:7s} {b['decision']:7s} {b['artifact']}")
    if a["decision"] != b["decision"]:
        bad.append(f"{name}: decision {a['decision']} on x86, {b['decision']} on arm64")
    if diff > tol:
        bad.append(f"{name}: |p diff| {diff:.2e} > {tol:g}")
    if a["artifact"] != b["artifact"]:
        bad.append(f"{name}: artifact {a['artifact']} on x86, {b['artifact']} on arm64")
if len(x86) < n:
    bad.append(f"only {len(x86)} images sorted on x86, {n} expected")
same = sum(1 for k in x86 if k in arm and x86[k]["decision"] == arm[k]["decision"])
print(f"RESULT ({what}): {same}/{len(x86)} decisions identical, max |p diff| {worst:.2e} (tolerance {tol:g}): "
      + ("PASS" if not bad else "FAIL: " + "; ".join(bad)))
sys.exit(1 if bad else 0)
EOF
)

write_report() {
    local started=$1 t_install=$2 t_watch=$3 verify_rc=$4 pipcheck_rc=$5 watch_rc=$6 ov_rc=$7 vset_rc=$8 status=0
    local text=$WORK/report.txt
    {
        echo "dermsort arm64 check (deploy/raspi/check-arm64.sh), started $started, finished $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "checkout copied into the root: $CHECKOUT"
        echo "host: $(uname -m), $(ds_os_release PRETTY_NAME); emulation: $EMULATED"
        echo "arm64 root: $(sed -n 's/^PRETTY_NAME=//p' "$RUN/etc/os-release" | tr -d '"'), uname -m in it: $(in_root uname -m)"
        echo
        echo "== installed in /opt/dermsort/venv (wheel tags: aarch64 builds from the registry)"
        cat "$WORK/versions.log"
        echo
        echo "== install.sh (last lines)"
        grep -E '^(dermsort-raspi-install|\+ .*pip (install|check)|wrote: .*dermsort.service|ONNX Runtime)' "$WORK/install.log" | tail -n 12 || true
        echo
        echo "== pip check in the venv: exit $pipcheck_rc"
        cat "$WORK/pipcheck.log"
        echo
        echo "== systemd-analyze verify /etc/systemd/system/dermsort.service: exit $verify_rc"
        cat "$WORK/verify.log"
        echo
        echo "== dermsort info (arm64)"
        quiet "$WORK/info.log"
        echo
        echo "== the unit's ExecStart (dermsort watch) as user dermsort, stopped with SIGTERM: exit $watch_rc"
        quiet "$WORK/watch.log" | tail -n 6
        echo
        echo "== the bundled verification set on arm64 (python -m dermsort.export.verify_set check): exit $vset_rc"
        quiet "$WORK/vset.log"
        echo
    } >"$text"
    python3 -c "$COMPARE_PY" "$WORK/x86-out/results.csv" "$WORK/arm64-results.csv" "$TOLERANCE" \
        "onnxruntime fp32" "$N_IMAGES" "the service's ExecStart, dermsort watch" >>"$text" || status=1
    if ((WITH_OPENVINO)); then
        echo >>"$text"
        if [[ -f $WORK/arm64-ov-results.csv ]]; then
            # OpenVINO's ARM plugin has its own kernels: decisions must match, p within the fp16 tolerance
            python3 -c "$COMPARE_PY" "$WORK/x86-out-ov/results.csv" "$WORK/arm64-ov-results.csv" 1e-2 \
                "openvino fp16" "$N_IMAGES" "dermsort sort" >>"$text" 2>&1 || status=1
        else
            echo "== openvino fp16 on arm64: dermsort sort failed (exit $ov_rc): $(tail -n 1 "$WORK/ov.log")" >>"$text"
            status=1
        fi
    fi
    ((verify_rc == 0 && pipcheck_rc == 0 && watch_rc == 0 && vset_rc == 0)) || status=1
    {
        echo
        echo "== timings (EMULATED: qemu user-mode on this x86 machine, niced; NOT Raspberry Pi timings)"
        echo "install.sh: ${t_install} s; the service's watch until ${N_IMAGES} images were sorted: ${t_watch} s"
        echo
        echo "OVERALL: $( ((status == 0)) && echo PASS || echo FAIL) (pip check exit $pipcheck_rc, systemd-analyze verify exit $verify_rc, watch exit $watch_rc, verification set exit $vset_rc)"
    } >>"$text"
    cat "$text"
    if [[ -n $REPORT ]]; then
        mkdir -p -- "$(dirname -- "$REPORT")"
        cp -- "$text" "$REPORT"
    fi
    say "work folder (logs): $WORK"
    return "$status"
}

main "$@"
