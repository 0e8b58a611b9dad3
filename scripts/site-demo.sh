#!/usr/bin/env bash
# The site-check demonstration of docs/SITE_CHECK.md, end to end, printing every figure the doc quotes.
#
#   1. ISIC 2020 validation split as a "site" (the claim holds there), and its test split sorted with that profile
#   2. the same patients behind another image pipeline: both splits re-encoded at JPEG quality 8
#      (scripts/recompress-site.py); val: validate + --write-site-profile; test: sorted with that profile
#   3. HAM10000 validation split as a "site", for contrast
#   4. non-dermoscopy photos (ood test split) sorted without a profile: the drift line
#
# Usage: scripts/site-demo.sh [WORK_DIR]   (default: a new temporary folder; nothing in the repo is written)
# Env: DERMSORT (default .venv/bin/dermsort), PYTHON (default .venv/bin/python), DATA (default ../shared/data),
#      QUALITY (default 8), PIN (default "--backend onnxruntime --precision fp32": the reference artifact, the one
#      the model card and tests/runtime/test_site_check.py measure; PIN= runs `auto` as a clinic would, whose artifact and
#      thresholds depend on the machine). The artifact that ran is printed with the figures.
set -euo pipefail
cd "$(dirname "$0")/.."
DERMSORT=${DERMSORT:-.venv/bin/dermsort}
PYTHON=${PYTHON:-.venv/bin/python}
DATA=${DATA:-../shared/data}
QUALITY=${QUALITY:-8}
PIN=${PIN---backend onnxruntime --precision fp32}
read -r -a PIN <<< "$PIN"
WORK=${1:-$(mktemp -d -t dermsort-site-demo.XXXXXX)}
mkdir -p "$WORK"
# the drift history and any default profile stay in the work folder
export XDG_STATE_HOME="$WORK/state" XDG_CONFIG_HOME="$WORK/config"
echo "work folder: $WORK"

copy_split() {  # SET_FOLDER SPLIT DEST [CSV]: the images of one split, without labels (a clinic's folder)
    "$PYTHON" - "$@" <<'PY'
import csv, os, shutil, sys
src, split, dst = sys.argv[1:4]
name = sys.argv[4] if len(sys.argv) > 4 else "labels.csv"
os.makedirs(dst, exist_ok=True)
with open(os.path.join(src, name), newline="") as fh:
    for row in csv.DictReader(fh):
        if row["split"] == split:
            shutil.copyfile(os.path.join(src, row["file"]), os.path.join(dst, os.path.basename(row["file"])))
PY
}

echo
echo "== 1. ISIC 2020 val as the site, ISIC 2020 test sorted with its profile"
echo "\$ dermsort validate --data $DATA/isic2020 --split val --out $WORK/isic-val --write-site-profile $WORK/isic-profile.json"
"$DERMSORT" validate --data "$DATA/isic2020" --split val --out "$WORK/isic-val" \
    --write-site-profile "$WORK/isic-profile.json" ${PIN[@]+"${PIN[@]}"}
copy_split "$DATA/isic2020" test "$WORK/isic-test"
echo "\$ dermsort sort $WORK/isic-test --out $WORK/isic-test-sorted --site-profile $WORK/isic-profile.json"
"$DERMSORT" sort "$WORK/isic-test" --out "$WORK/isic-test-sorted" --site-profile "$WORK/isic-profile.json"

echo
echo "== 2. ISIC 2020 re-encoded at JPEG quality $QUALITY as the site"
echo "\$ scripts/recompress-site.py $DATA/isic2020 val $QUALITY $WORK/jpeg-val-images   # and test -> jpeg-test-images"
"$PYTHON" scripts/recompress-site.py "$DATA/isic2020" val "$QUALITY" "$WORK/jpeg-val-images"
"$PYTHON" scripts/recompress-site.py "$DATA/isic2020" test "$QUALITY" "$WORK/jpeg-test-labelled"
copy_split "$WORK/jpeg-test-labelled" test "$WORK/jpeg-test-images"
echo "\$ dermsort validate --data $WORK/jpeg-val-images --out $WORK/jpeg-val --write-site-profile $WORK/jpeg-profile.json"
"$DERMSORT" validate --data "$WORK/jpeg-val-images" --out "$WORK/jpeg-val" \
    --write-site-profile "$WORK/jpeg-profile.json" ${PIN[@]+"${PIN[@]}"}
echo "\$ dermsort sort $WORK/jpeg-test-images --out $WORK/jpeg-test-sorted --site-profile $WORK/jpeg-profile.json"
"$DERMSORT" sort "$WORK/jpeg-test-images" --out "$WORK/jpeg-test-sorted" --site-profile "$WORK/jpeg-profile.json"

echo
echo "== 3. HAM10000 val as the site"
echo "\$ dermsort validate --data $DATA/ham10000 --split val --out $WORK/ham-val"
"$DERMSORT" validate --data "$DATA/ham10000" --split val --out "$WORK/ham-val" ${PIN[@]+"${PIN[@]}"}

echo
echo "== 4. non-dermoscopy photos (ood test split) sorted without a site profile"
copy_split "$DATA/ood" test "$WORK/ood-test" ood.csv
echo "\$ dermsort sort $WORK/ood-test --out $WORK/ood-sorted --no-site-profile"
"$DERMSORT" sort "$WORK/ood-test" --out "$WORK/ood-sorted" --no-site-profile ${PIN[@]+"${PIN[@]}"}

echo
echo "== figures (docs/SITE_CHECK.md quotes these)"
"$PYTHON" - "$DATA/isic2020" "$WORK" "$QUALITY" <<'FIGURES'
import csv, json, os, sys
from dermsort.runtime.metrics import wilson_ci

data, work, quality = sys.argv[1], sys.argv[2], sys.argv[3]
pct = lambda k, n: f"{100 * k / n:.1f} % ({k}/{n}, 95 % CI " + "-".join(f"{100 * c:.1f}" for c in wilson_ci(k, n)) + " %)"
load = lambda *p: json.load(open(os.path.join(work, *p)))
labels = {}
with open(os.path.join(data, "labels.csv"), newline="") as fh:
    for row in csv.DictReader(fh):
        if row["split"] == "test":
            labels[os.path.splitext(os.path.basename(row["file"]))[0]] = row


def site(name, val):
    a, s = val["at_validated_threshold"], val["site_threshold"]
    print(f"{name}: {val['data']['n_scored']} images, {val['data']['n_malignant']} malignant; at the validated threshold "
          f"{val['validated_threshold']:.4f} sensitivity {pct(a['confusion']['tp'], a['n_malignant'])}, specificity "
          f"{100 * a['specificity']:.1f} %, work reduction {100 * a['work_reduction']:.1f} %; claim holds: "
          f"{val['claim']['holds']} (confirmed: {val['claim'].get('confirmed')})")
    print(f"{name}: site threshold {s['needed_threshold']:.4f} ({s.get('direction')}): sensitivity "
          f"{pct(round(s['sensitivity'] * s['n_malignant']), s['n_malignant'])}, specificity "
          f"{100 * s['specificity']:.1f} %, work reduction {100 * s['work_reduction']:.1f} %")


def sorted_test(name, folder, profile):
    prof = load(profile)
    with open(os.path.join(work, folder, "results.csv"), newline="") as fh:
        rows = {os.path.splitext(os.path.basename(r["dest"]))[0]: r for r in csv.DictReader(fh)}
    mel = [rows[n] for n, r in labels.items() if r["dx"] == "mel"]
    ben = [rows[n] for n, r in labels.items() if r["malignant"] == "0"]
    caught = sum(r["decision"] == "review" for r in mel)
    spec = sum(r["decision"] == "benign" for r in ben)
    benign = sum(r["decision"] == "benign" for r in rows.values())
    print(f"{name}, sorted with the site profile (threshold {prof['threshold']:.4f}): melanoma sensitivity "
          f"{pct(caught, len(mel))}, specificity {100 * spec / len(ben):.1f} %, work reduction {100 * benign / len(rows):.1f} %")
    vt = prof["validated_threshold"]
    at_v = lambda r: not r["p_malignant"] or float(r["p_malignant"]) >= vt or r["reason"].startswith("not recognised")
    caught_v = sum(at_v(r) for r in mel)
    spec_v = sum(not at_v(r) for r in ben)
    print(f"{name} at the validated threshold {vt:.4f} (same scores): melanoma sensitivity {pct(caught_v, len(mel))}, "
          f"specificity {100 * spec_v / len(ben):.1f} %, work reduction {100 * sum(not at_v(r) for r in rows.values()) / len(rows):.1f} %")
    drift(name, folder)


def drift(name, folder):
    run = json.loads(open(os.path.join(work, folder, ".dermsort", "runs.jsonl")).read().splitlines()[-1])
    print(f"{name}: drift check: {run['benign']} of {run['n_images']} to benign/ (validation predicts "
          f"{run['benign_band'][0]}-{run['benign_band'][1]}), KS distance {run['p_ks']}, not dermoscopy "
          f"{run.get('ood_rejected')}, alarm: {run['alarm']} {run.get('departures') or ''}")


val = load("isic-val", "validation.json")
print(f"model {val['model_id']}, artifact {val['artifact']['name']} ({val['backend'].get('backend')})")
site("ISIC 2020 val", val)
sorted_test("ISIC 2020 test", "isic-test-sorted", "isic-profile.json")
site(f"ISIC 2020 val at JPEG quality {quality}", load("jpeg-val", "validation.json"))
sorted_test(f"ISIC 2020 test at JPEG quality {quality}", "jpeg-test-sorted", "jpeg-profile.json")
site("HAM10000 val", load("ham-val", "validation.json"))
drift("ood test (no profile)", "ood-sorted")
FIGURES
