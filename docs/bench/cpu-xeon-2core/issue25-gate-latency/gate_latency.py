"""Model-only latency of two bundles of the same classifier with different not-dermoscopy gates, paired in
one process (rounds alternate between them, so machine load hits both alike); medians of ROUNDS rounds (default 5).

    python docs/bench/cpu-xeon-2core/issue25-gate-latency/gate_latency.py OLD_BUNDLE NEW_BUNDLE [ROUNDS]
"""
import sys
import time

import numpy as np

from dermsort.runtime.bundle import load_bundle
from dermsort.runtime.engine import create_backend

rng = np.random.default_rng(0)
batches = {"b1": rng.standard_normal((1, 3, 224, 224)).astype(np.float32),
           "b16": rng.standard_normal((16, 3, 224, 224)).astype(np.float32)}
loaded = {}
for label, path in (("old", sys.argv[1]), ("new", sys.argv[2])):
    bundle, _ = load_bundle(path)
    print(label, path, bundle.metadata.gate.details.get("features"))
    for name in ("onnx-fp32", "openvino-bf16"):
        art = bundle.get(name)
        loaded[(name, label)] = create_backend(art.backend, bundle, art).load()
times: dict = {}
for _ in range(int(sys.argv[3]) if len(sys.argv) > 3 else 5):
    for key, backend in loaded.items():
        for tag, x in batches.items():
            backend.predict(x)
            t0 = time.perf_counter()
            for _ in range(3):
                backend.predict(x)
            times.setdefault((*key, tag), []).append((time.perf_counter() - t0) / 3 / len(x) * 1000)
for (name, label, tag), values in sorted(times.items()):
    print(f"{name:14s} {tag:4s} {label}: {np.median(values):6.2f} ms/image")
