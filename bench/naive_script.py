"""Issue 26's yardstick, kept as written: the 20-line script a clinic's IT person would write with the same model.

``python -m dermsort.bench.naive_script FOLDER OUT [MODEL_DIR]``: Pillow open + RGB, shorter side to 224,
centre crop, the model card's colour constancy (Shades of Gray, p=6) and ``(x - 127) / 128``, the bundle's
``model.onnx`` (FP32) on ONNX Runtime with its default options at batch 1, the gate and the threshold from
the bundle's manifest, ``shutil.copy2`` into OUT/benign or OUT/review. No hashing, no journal, no fsync.
"""
import json, shutil, sys
from pathlib import Path

import numpy as np, onnxruntime as ort
from PIL import Image

folder, out = Path(sys.argv[1]), Path(sys.argv[2])
model = Path(sys.argv[3]) if len(sys.argv) > 3 else Path(__file__).resolve().parents[1] / "runtime/models/default"
meta = json.loads((model / "manifest.json").read_text())["metadata"]
classes, malignant, size = meta["classes"], meta["malignant_classes"], meta["preprocess"]["input_size"]
gate = meta.get("gate", {}).get("threshold") if meta.get("gate", {}).get("method") else None
session = ort.InferenceSession(str(model / "model.onnx"), providers=["CPUExecutionProvider"])
for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")):
    img = Image.open(path).convert("RGB")
    scale = size / min(img.size)
    img = img.resize((max(size, round(img.width * scale)), max(size, round(img.height * scale))), Image.BILINEAR)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    x = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.float32)
    illuminant = ((x / 255) ** 6).reshape(-1, 3).mean(0) ** (1 / 6)
    x = np.clip(x * np.linalg.norm(illuminant) / (illuminant * np.sqrt(3)), 0, 255)
    out_row = session.run(None, {meta["input_name"]: ((x - 127) / 128).transpose(2, 0, 1)[None].astype(np.float32)})[0][0]
    p = sum(out_row[classes.index(c)] for c in malignant)
    decision = "benign" if p < meta["threshold"] and (gate is None or out_row[len(classes)] < gate) else "review"
    (out / decision).mkdir(parents=True, exist_ok=True)
    shutil.copy2(path, out / decision / path.name)
