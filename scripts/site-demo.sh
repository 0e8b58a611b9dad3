#!/usr/bin/env bash
# The site-check demonstration of docs/SITE_CHECK.md, end to end, printing every figure the doc quotes.
#
#   1. ISIC 2020 validation split as a "site": dermsort validate + --write-site-profile
#   2. the ISIC 2020 test split sorted with that profile, and the same images at the validated threshold
#   3. HAM10000 validation split as a "site", for contrast
#
# Usage: scripts/site-demo.sh [WORK_DIR]   (default: a new temporary folder; nothing in the repo is written)
# Env: DERMSORT (default .venv/bin/dermsort), PYTHON (default .venv/bin/python), DATA (default ../shared/data).
# The backend is `auto`, as a clinic would run it: the artifact it picks is printed with the figures.
set -euo pipefail
cd "$(dirname "$0")/.."
DERMSORT=${DERMSORT:-.venv/bin/dermsort}
PYTHON=${PYTHON:-.venv/bin/python}
DATA=${DATA:-../shared/data}
WORK=${1:-$(mktemp -d -t dermsort-site-demo.XXXXXX)}
mkdir -p "$WORK"
echo "work folder: $WORK"

echo
echo "== 1. ISIC 2020 val as the site"
echo "\$ dermsort validate --data $DATA/isic2020 --split val --out $WORK/isic-val --write-site-profile $WORK/isic-profile.json"
"$DERMSORT" validate --data "$DATA/isic2020" --split val --out "$WORK/isic-val" \
    --write-site-profile "$WORK/isic-profile.json"

echo
echo "== 2. ISIC 2020 test sorted with the site profile"
"$PYTHON" - "$DATA/isic2020" "$WORK/isic-test" <<'EOF'
import csv, os, shutil, sys
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst, exist_ok=True)
with open(os.path.join(src, "labels.csv"), newline="") as fh:
    for row in csv.DictReader(fh):
        if row["split"] == "test":
            shutil.copyfile(os.path.join(src, row["file"]), os.path.join(dst, os.path.basename(row["file"])))
EOF
echo "\$ dermsort sort $WORK/isic-test --out $WORK/isic-test-sorted --site-profile $WORK/isic-profile.json"
"$DERMSORT" sort "$WORK/isic-test" --out "$WORK/isic-test-sorted" --site-profile "$WORK/isic-profile.json"

echo
echo "== 3. HAM10000 val as the site"
echo "\$ dermsort validate --data $DATA/ham10000 --split val --out $WORK/ham-val"
"$DERMSORT" validate --data "$DATA/ham10000" --split val --out "$WORK/ham-val"

echo
echo "== figures (docs/SITE_CHECK.md quotes these)"
"$PYTHON" - "$DATA/isic2020" "$WORK" <<'EOF'
import csv, json, os, sys
from dermsort.runtime.metrics import wilson_ci

data, work = sys.argv[1], sys.argv[2]
pct = lambda k, n: f"{100 * k / n:.1f} % ({k}/{n}, 95 % CI " + "-".join(f"{100 * c:.1f}" for c in wilson_ci(k, n)) + " %)"
val = json.load(open(os.path.join(work, "isic-val", "validation.json")))
prof = json.load(open(os.path.join(work, "isic-profile.json")))
ham = json.load(open(os.path.join(work, "ham-val", "validation.json")))
a, s = val["at_validated_threshold"], val["site_threshold"]
print(f"model {val['model_id']}, artifact {val['artifact']['name']} ({val['backend'].get('backend')}), "
      f"validated threshold {val['validated_threshold']:.4f}")
print(f"ISIC 2020 val: {val['data']['n_scored']} images, {val['data']['n_malignant']} melanomas; at the validated threshold "
      f"sensitivity {pct(a['confusion']['tp'], a['n_malignant'])}, specificity {100 * a['specificity']:.1f} %, "
      f"work reduction {100 * a['work_reduction']:.1f} %; claim holds: {val['claim']['holds']}")
print(f"ISIC 2020 val: site threshold {s['needed_threshold']:.4f}: sensitivity "
      f"{pct(round(s['sensitivity'] * s['n_malignant']), s['n_malignant'])}, specificity {100 * s['specificity']:.1f} %, "
      f"work reduction {100 * s['work_reduction']:.1f} %")
labels = {}
with open(os.path.join(data, "labels.csv"), newline="") as fh:
    for row in csv.DictReader(fh):
        if row["split"] == "test":
            labels[os.path.basename(row["file"])] = row
with open(os.path.join(work, "isic-test-sorted", "results.csv"), newline="") as fh:
    rows = {os.path.basename(r["dest"]): r for r in csv.DictReader(fh)}
mel = [rows[n] for n, r in labels.items() if r["dx"] == "mel"]
ben = [rows[n] for n, r in labels.items() if r["malignant"] == "0"]
caught = sum(r["decision"] == "review" for r in mel)
spec = sum(r["decision"] == "benign" for r in ben)
benign = sum(r["decision"] == "benign" for r in rows.values())
print(f"ISIC 2020 test with the site profile (threshold {prof['threshold']:.4f}): melanoma sensitivity {pct(caught, len(mel))}, "
      f"specificity {100 * spec / len(ben):.1f} %, work reduction {100 * benign / len(rows):.1f} %")
vt = prof["validated_threshold"]
caught_v = sum(float(r["p_malignant"]) >= vt for r in mel)
spec_v = sum(float(r["p_malignant"]) < vt for r in ben)
print(f"ISIC 2020 test at the validated threshold {vt:.4f} (same scores): melanoma sensitivity {pct(caught_v, len(mel))}, "
      f"specificity {100 * spec_v / len(ben):.1f} %")
run = json.loads(open(os.path.join(work, "isic-test-sorted", ".dermsort", "runs.jsonl")).read().splitlines()[-1])
print(f"drift check of that sort: {run['benign']} of {run['n_images']} to benign/ (validation predicts "
      f"{run['benign_band'][0]}-{run['benign_band'][1]}), KS distance {run['p_ks']}, alarm: {run['alarm']}")
ha, hs = ham["at_validated_threshold"], ham["site_threshold"]
print(f"HAM10000 val: {ham['data']['n_scored']} images, {ham['data']['n_malignant']} malignant; at the validated threshold "
      f"sensitivity {pct(ha['confusion']['tp'], ha['n_malignant'])}; claim holds: {ham['claim']['holds']}; "
      f"site threshold {hs['needed_threshold']:.4f} ({hs.get('direction')}), sensitivity "
      f"{pct(round(hs['sensitivity'] * hs['n_malignant']), hs['n_malignant'])}")
EOF
