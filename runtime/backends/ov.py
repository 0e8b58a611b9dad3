"""OpenVINO backend: IR (FP16/INT8 from NNCF) or ONNX, on CPU (or GPU/NPU when present)."""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from ..engine import compiled_cache_dir
from .base import Backend, BackendSpec


@functools.lru_cache(maxsize=1)
def _status() -> tuple[bool, str]:
    """Once per process: a new ov.Core() plus device discovery costs ~15-40 ms, and one `dermsort sort`
    asked ~5 times (issue 15)."""
    try:
        import openvino as ov
    except ImportError:
        return False, 'openvino is not installed: pip install "dermsort[openvino]"'
    devices = ov.Core().available_devices
    if not devices:
        return False, "openvino is installed but sees no device"
    return True, f"openvino {ov.get_version()}, devices {', '.join(devices)}"


class OpenVinoBackend(Backend):
    spec = BackendSpec("openvino", ("openvino-ir", "onnx"), "openvino", "Intel OpenVINO (CPU, iGPU, NPU)")

    @classmethod
    def available(cls) -> tuple[bool, str]:
        return _status()

    def _load_impl(self) -> None:
        import openvino as ov

        core = ov.Core()
        device = (self.device or "CPU").upper()
        # Compiled-model cache: OpenVINO keys each blob by the model graph + weights, the compile
        # properties, the device and its own version, so a new model or library never reuses a stale
        # blob. Compile of the default INT8 IR: ~150 ms -> ~45 ms (docs/BENCHMARKS.md).
        folder = compiled_cache_dir("openvino")
        if folder is not None:
            core.set_property({"CACHE_DIR": os.fspath(folder)})
        self.cache_dir = folder
        model = core.read_model(os.fspath(self.bundle.artifact_path(self.artifact)))
        size = self.metadata.preprocess.input_size
        model.reshape({model.inputs[0].get_any_name(): ov.PartialShape([-1, 3, size, size])})
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if device == "CPU":
            # OpenVINO silently runs bf16 on CPUs with AVX512-BF16/AMX; the artifact's precision (and the
            # parity gate that accepted it) must not depend on which CPU it lands on.
            config["INFERENCE_PRECISION_HINT"] = "f32"
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        self.compiled = core.compile_model(model, device, config)
        self.request = self.compiled.create_infer_request()
        self.device_name = device

    def _predict_impl(self, batch: np.ndarray) -> np.ndarray:
        result = self.request.infer({0: batch})
        return np.array(result[self.compiled.outputs[0]], copy=True)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["device"] = getattr(self, "device_name", (self.device or "CPU").upper())
        info["compiled_cache"] = os.fspath(self.cache_dir) if getattr(self, "cache_dir", None) else "off"
        return info
