"""ONNX Runtime backend (CPU; CUDA / TensorRT execution providers when onnxruntime-gpu is installed)."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import numpy as np

from ..bundle import sha256_file
from ..caches import compiled_cache_dir, cpu_fingerprint
from ..metadata import ARTIFACT_RECORD_KEY, ONNX_METADATA_KEY
from .base import Backend, BackendSpec, inference_streams, split_batch

log = logging.getLogger(__name__)

#: ONNX Runtime's intra-op threads spin-wait for work by default; in `dermsort sort` they share the cores
#: with the decode threads, and spinning burns the CPU those need. Off: +7-15 % end to end on 2 cores in
#: paired A/Bs (issue 2), faster in 4/4 alternating whole-sort rounds on 300 images (issue 15; figures in
#: docs/BENCHMARKS.md); costs ~0.8 ms of isolated batch-1 latency.
ALLOW_SPINNING = False


def optimized_model_name(sha256: str, ort_version: str) -> str:
    """Cache file name of an artifact's optimised graph: model sha, ORT version, CPU fingerprint."""
    return f"{sha256[:20]}-ort{ort_version}-cpu{cpu_fingerprint()}.onnx"


class OnnxRuntimeBackend(Backend):
    spec = BackendSpec("onnxruntime", ("onnx",), "", "ONNX Runtime, CPU or CUDA (onnxruntime-gpu)",
                       library="onnxruntime", install='pip install "dermsort[cpu]" (or "dermsort[gpu]")')
    cache_state = "off"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            import onnxruntime as ort
        except ImportError:
            return False, ('no ONNX Runtime is installed: pip install "dermsort[cpu]" (or "dermsort[gpu]" for '
                           'onnxruntime-gpu; never both)')
        return True, f"onnxruntime {ort.__version__}, providers {', '.join(ort.get_available_providers())}"

    def _options(self, ort: Any, level: Any) -> Any:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = level
        opts.intra_op_num_threads = self._per_stream
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        if not ALLOW_SPINNING:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return opts

    def _load_impl(self) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        wanted = ["CPUExecutionProvider"]
        if self.device in (None, "cuda") and "CUDAExecutionProvider" in available:
            wanted.insert(0, "CUDAExecutionProvider")
        # on CPU, a batch runs as `streams` parts at once (one session: its run() may be called concurrently)
        self._streams, self._per_stream = inference_streams(self.threads) if wanted == ["CPUExecutionProvider"] \
            else (1, self.threads or (os.cpu_count() or 1))
        self._pool = None
        source = os.fspath(self.bundle.artifact_path(self.artifact))
        # the optimised graph is CPU-specific (layouts, fused kernels): cache it only for CPU-only sessions
        self.session = self._cached_session(ort, source) if wanted == ["CPUExecutionProvider"] else None
        if self.session is None:
            opts = self._options(ort, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
            self.session = ort.InferenceSession(source, opts, providers=wanted)
        # ORT falls back to CPU silently when a provider fails to start: record what really runs.
        self.providers = self.session.get_providers()
        if self.device == "cuda" and "CUDAExecutionProvider" not in self.providers:
            log.warning("CUDA requested but ONNX Runtime runs on %s", self.providers)
        embedded = self.session.get_modelmeta().custom_metadata_map
        self.embedded_metadata = embedded.get(ONNX_METADATA_KEY)
        self.embedded_artifacts = embedded.get(ARTIFACT_RECORD_KEY)
        self.input_name = self.session.get_inputs()[0].name
        self.input_type = self.session.get_inputs()[0].type
        log.info("onnxruntime session for %s on %s (optimised-graph cache: %s)", self.artifact.name, self.providers,
                 self.cache_state)

    def _cached_session(self, ort: Any, source: str) -> Any:
        """A CPU session from the optimised graph cached by an earlier run, or one that writes that cache.

        ORT re-optimises the graph on every start (~25-40 ms for the default model, on 2 cores); the
        optimised graph saved once and loaded with optimisations off gives bit-identical outputs. Keyed by
        the artifact's sha256 (verified against the manifest before load), the ORT version and the CPU; a
        sidecar sha256 guards the cached file against corruption. Any failure falls back to the source.
        """
        self.cache_state = "off"
        folder = compiled_cache_dir("onnxruntime")
        if folder is None:
            return None
        path = folder / optimized_model_name(self.artifact.sha256, ort.__version__)
        digest = path.with_name(path.name + ".sha256")
        if path.is_file() and digest.is_file():
            try:
                if sha256_file(path) == digest.read_text().strip():
                    session = ort.InferenceSession(os.fspath(path), self._options(
                        ort, ort.GraphOptimizationLevel.ORT_DISABLE_ALL), providers=["CPUExecutionProvider"])
                    self.cache_state = "hit"
                    return session
                log.warning("cached optimised model %s is corrupt: rebuilding it", path)
            except Exception as exc:  # unreadable/incompatible cache: rebuild from the verified source
                log.warning("cached optimised model %s unusable (%s): rebuilding it", path, exc)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            opts = self._options(ort, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
            opts.optimized_model_filepath = os.fspath(tmp)
            session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
            tmp_digest = digest.with_name(f".{digest.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp_digest.write_text(sha256_file(tmp) + "\n")
            os.replace(tmp, path)
            os.replace(tmp_digest, digest)
            self.cache_state = "written"
            return session
        except OSError as exc:  # read-only or full cache folder: run without the cache
            log.info("could not write optimised-model cache %s: %s", path, exc)
            for leftover in folder.glob(f".{path.name}*.tmp"):
                leftover.unlink(missing_ok=True)
            return None

    def _predict_impl(self, batch: np.ndarray) -> np.ndarray:
        if self.input_type == "tensor(float16)":
            batch = batch.astype(np.float16)
        parts = split_batch(batch, self._streams)
        if len(parts) == 1:
            return self.session.run(None, {self.input_name: batch})[0]
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=self._streams, thread_name_prefix="ort-stream")
        runs = [self._pool.submit(self.session.run, None, {self.input_name: part}) for part in parts]
        return np.concatenate([r.result()[0] for r in runs])

    def close(self) -> None:
        if getattr(self, "_pool", None) is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        super().close()

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["providers"] = getattr(self, "providers", [])
        info["device"] = "cuda" if "CUDAExecutionProvider" in info["providers"] else "cpu"
        info["graph_cache"] = self.cache_state
        info["streams"] = f"{getattr(self, '_streams', 1)}x{getattr(self, '_per_stream', 0)} threads"
        return info
