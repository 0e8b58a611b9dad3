"""OpenVINO backend: IR (FP16/INT8 from NNCF) or ONNX, on CPU (or GPU/NPU when present)."""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from ..caches import compiled_cache_dir
from ..metadata import ARTIFACT_RECORD_KEY, ONNX_METADATA_KEY
from .base import Backend, BackendSpec, inference_streams, split_batch


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
    spec = BackendSpec("openvino", ("openvino-ir", "onnx"), "openvino", "Intel OpenVINO (CPU, iGPU, NPU)",
                       library="openvino")

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
        if model.has_rt_info(ONNX_METADATA_KEY):
            self.embedded_metadata = model.get_rt_info(ONNX_METADATA_KEY).astype(str)
        if model.has_rt_info(ARTIFACT_RECORD_KEY):
            self.embedded_artifacts = model.get_rt_info(ARTIFACT_RECORD_KEY).astype(str)
        size = self.metadata.preprocess.input_size
        model.reshape({model.inputs[0].get_any_name(): ov.PartialShape([-1, 3, size, size])})
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        streams, per_stream = inference_streams(self.threads) if device == "CPU" else (1, 0)
        if streams > 1:  # a batch runs as `streams` parts at once, each on its own thread(s)
            config = {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": streams,
                      "INFERENCE_NUM_THREADS": streams * per_stream}
        if device == "CPU":
            # OpenVINO silently runs bf16 on CPUs with AVX512-BF16/AMX; the artifact's precision (and the
            # parity gate that accepted it) must not depend on which CPU it lands on. bf16 execution is an
            # artifact of its own (precision "bf16", gated like any other), never a silent default.
            config["INFERENCE_PRECISION_HINT"] = "bf16" if self.artifact.precision == "bf16" else "f32"
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        self.compiled = core.compile_model(model, device, config)
        self.requests = [self.compiled.create_infer_request() for _ in range(streams)]
        self.request = self.requests[0]
        self.streams = streams
        self.device_name = device
        try:  # what really runs: a CPU without bf16 support executes a bf16 request in f32
            hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
            self.execution_precision = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        except Exception:  # a device plugin without the property
            self.execution_precision = ""
        if self.artifact.precision == "bf16" and self.execution_precision != "bf16":
            # its threshold and gate verdict are for bf16 numerics; f32 here would be another model
            raise RuntimeError(f"{self.artifact.name} needs bf16 execution, which OpenVINO does not offer on this "
                               f"{device} (it would run {self.execution_precision or 'f32'})")

    def _predict_impl(self, batch: np.ndarray) -> np.ndarray:
        parts = split_batch(batch, len(self.requests))
        if len(parts) == 1:
            result = self.request.infer({0: batch})
            return np.array(result[self.compiled.outputs[0]], copy=True)
        for request, part in zip(self.requests, parts):
            request.start_async({0: part})
        out = []
        for request, _ in zip(self.requests, parts):
            request.wait()
            out.append(np.array(request.get_output_tensor(0).data, copy=True))
        return np.concatenate(out)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["device"] = getattr(self, "device_name", (self.device or "CPU").upper())
        if getattr(self, "execution_precision", ""):
            info["execution_precision"] = self.execution_precision
        info["streams"] = getattr(self, "streams", 1)
        info["compiled_cache"] = os.fspath(self.cache_dir) if getattr(self, "cache_dir", None) else "off"
        return info
