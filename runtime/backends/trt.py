"""TensorRT backend: a native engine built on the target GPU (see ``dermsort export-engines``).

Written against the TensorRT 10 Python API (named tensors, ``execute_async_v3``) with cuda-python
for device memory. Engines are not portable between GPUs or TensorRT versions, so the manifest
records what each engine was built for and a mismatch is refused before deserialising.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Backend, BackendSpec


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python
    return cudart


def _check(result: Any) -> Any:
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA runtime error {err}")
    return rest[0] if len(rest) == 1 else rest


def _device_facts(trt: Any, cudart: Any) -> dict[str, str]:
    """This device as ``built_for`` records it: GPU name, compute capability, TensorRT version."""
    props = _check(cudart.cudaGetDeviceProperties(_check(cudart.cudaGetDevice())))
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return {"gpu": name.strip("\x00 "), "compute_capability": f"{props.major}.{props.minor}",
            "tensorrt": trt.__version__}


def built_for_mismatch(built_for: dict[str, Any], here: dict[str, Any]) -> str:
    """Why an engine built for ``built_for`` must not be loaded on ``here`` ("" when it may).

    Engines are specific to the TensorRT version and to the GPU (compute capability, and the exact model:
    same-architecture GPUs differ in SM count and memory, so tactics timed on one are not those of the
    other). A key the manifest does not record is not checked (engines from older exports).
    """
    def norm(value: Any) -> str:
        return " ".join(str(value).replace("\x00", " ").split()).lower()

    problems = []
    for key, what in (("tensorrt", "TensorRT"), ("gpu", "GPU"), ("compute_capability", "compute capability")):
        want, have = built_for.get(key), here.get(key)
        if want and have and norm(want) != norm(have):
            problems.append(f"{what} {want} (this device: {have})")
    return ("was built for " + ", ".join(problems)) if problems else ""


class TensorRTBackend(Backend):
    spec = BackendSpec("tensorrt", ("tensorrt-engine",), "tensorrt", "NVIDIA TensorRT engine (GPU)",
                       library="tensorrt",
                       install='pip install "dermsort[tensorrt]" (needs an NVIDIA GPU)')
    #: the sorter calls it on the thread that loaded it: its overlap of inference and placement was never
    #: measured on a GPU (no GPU was lent to that work), so it is not assumed
    infer_off_thread = False

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            import tensorrt as trt
        except ImportError:
            return False, 'tensorrt is not installed: pip install "dermsort[tensorrt]" (needs an NVIDIA GPU)'
        try:
            cudart = _cudart()
        except ImportError:
            return False, 'cuda-python is not installed: pip install "dermsort[tensorrt]"'
        try:
            count = _check(cudart.cudaGetDeviceCount())
        except Exception as exc:
            return False, f"no usable NVIDIA GPU ({exc})"
        if not count:
            return False, "no NVIDIA GPU found"
        props = _check(cudart.cudaGetDeviceProperties(0))
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        return True, f"tensorrt {trt.__version__} on {name.strip(chr(0))}"

    def _load_impl(self) -> None:
        import tensorrt as trt

        self._check_built_for(trt)
        cudart = _cudart()
        self._cudart = cudart
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        blob = self.bundle.artifact_path(self.artifact).read_bytes()
        self.engine = self.runtime.deserialize_cuda_engine(blob)
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialise {self.artifact.path} (built for another GPU or version?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.in_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.input_name)))
        self.out_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.output_name)))
        _, _, max_shape = self.engine.get_tensor_profile_shape(self.input_name, 0)
        self._max_batch = int(max_shape[0])
        self.n_classes = self.metadata.output_width  # classes (+ the gate's column)
        size = self.metadata.preprocess.input_size
        self.in_bytes = self._max_batch * 3 * size * size * self.in_dtype.itemsize
        self.out_bytes = self._max_batch * self.n_classes * self.out_dtype.itemsize
        self.stream = _check(cudart.cudaStreamCreate())
        self.d_in = _check(cudart.cudaMalloc(self.in_bytes))
        self.d_out = _check(cudart.cudaMalloc(self.out_bytes))
        self.context.set_tensor_address(self.input_name, int(self.d_in))
        self.context.set_tensor_address(self.output_name, int(self.d_out))

    def _check_built_for(self, trt: Any) -> None:
        problem = built_for_mismatch(self.artifact.built_for or {}, _device_facts(trt, _cudart()))
        if problem:
            raise RuntimeError(f"engine {self.artifact.name} {problem}; rebuild it on this device with "
                               "`dermsort export-engines`")

    @property
    def max_batch(self) -> int:
        return getattr(self, "_max_batch", 32)

    def _predict_impl(self, batch: np.ndarray) -> np.ndarray:
        cudart = self._cudart
        outputs = []
        for start in range(0, len(batch), self._max_batch):
            chunk = np.ascontiguousarray(batch[start:start + self._max_batch], dtype=self.in_dtype)
            n = len(chunk)
            self.context.set_input_shape(self.input_name, chunk.shape)
            host_out = np.empty((n, self.n_classes), dtype=self.out_dtype)
            _check(cudart.cudaMemcpyAsync(self.d_in, chunk.ctypes.data, chunk.nbytes,
                                          cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))
            if not self.context.execute_async_v3(int(self.stream)):
                raise RuntimeError("TensorRT execution failed")
            _check(cudart.cudaMemcpyAsync(host_out.ctypes.data, self.d_out, host_out.nbytes,
                                          cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))
            _check(cudart.cudaStreamSynchronize(self.stream))
            outputs.append(host_out.astype(np.float32))
        return np.concatenate(outputs)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["device"] = "cuda"
        return info

    def close(self) -> None:
        cudart = getattr(self, "_cudart", None)
        if cudart is not None:
            for ptr in ("d_in", "d_out"):
                if getattr(self, ptr, None) is not None:
                    cudart.cudaFree(getattr(self, ptr))
                    setattr(self, ptr, None)
            if getattr(self, "stream", None) is not None:
                cudart.cudaStreamDestroy(self.stream)
                self.stream = None
        super().close()
