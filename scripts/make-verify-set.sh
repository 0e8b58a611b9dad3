#!/usr/bin/env bash
# Regenerates the default bundle's verification set: runtime/models/default/verify/ (24 real images
# and reference.json, the FP32 reference's decisions and P(malignant) on them) and the manifest's
# verification_set entry. `dermsort export-engines` verifies TensorRT engines against it on the
# device, without labels (export/verify_set.py). Run it after the bundled model changes.
#
# Images: ../shared/data/kaggle-melanoma-sample (300x300 JPEGs, CC0 as stated by its publisher; built
# from ISIC images), the original files copied, chosen by the reference's own P(malignant): 12 on each
# side of the threshold, at least 1.0 logit from it. Labels are not used.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
exec "$PYTHON" -m dermsort.export.verify_set build runtime/models/default \
    --images ../shared/data/kaggle-melanoma-sample/images --count 24 --margin 1.0 "$@"
