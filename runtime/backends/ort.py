"""ONNX Runtime backend (CPU; CUDA / TensorRT execution providers when onnxruntime-gpu is installed)."""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from .base import Backend, BackendSpec

log = logging.getLogger(__name__)


class OnnxRuntimeBackend(Backend):
    spec = BackendSpec("onnxruntime", ("onnx",), "", "ONNX Runtime, CPU or CUDA (onnxruntime-gpu)")

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            import onnxruntime as ort
        except ImportError:
            return False, ('no ONNX Runtime is installed: pip install "dermsort[cpu]" (or "dermsort[gpu]" for '
                           'onnxruntime-gpu; never both)')
        return True, f"onnxruntime {ort.__version__}, providers {', '.join(ort.get_available_providers())}"

    def _load_impl(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = self.threads or (os.cpu_count() or 1)
        opts.log_severity_level = 3
        available = ort.get_available_providers()
        wanted = ["CPUExecutionProvider"]
        if self.device in (None, "cuda") and "CUDAExecutionProvider" in available:
            wanted.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(os.fspath(self.bundle.artifact_path(self.artifact)), opts, providers=wanted)
        # ORT falls back to CPU silently when a provider fails to start: record what really runs.
        self.providers = self.session.get_providers()
        if self.device == "cuda" and "CUDAExecutionProvider" not in self.providers:
            log.warning("CUDA requested but ONNX Runtime runs on %s", self.providers)
        self.input_name = self.session.get_inputs()[0].name
        self.input_type = self.session.get_inputs()[0].type
        log.info("onnxruntime session for %s on %s", self.artifact.name, self.providers)

    def _predict_impl(self, batch: np.ndarray) -> np.ndarray:
        if self.input_type == "tensor(float16)":
            batch = batch.astype(np.float16)
        return self.session.run(None, {self.input_name: batch})[0]

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["providers"] = getattr(self, "providers", [])
        info["device"] = "cuda" if "CUDAExecutionProvider" in info["providers"] else "cpu"
        return info
