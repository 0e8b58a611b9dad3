"""TensorRT engines, built on the target GPU from the bundle's ONNX files (TensorRT 10 Python API).

* FP16: the FP32 reference ONNX with ``BuilderFlag.FP16`` (TensorRT picks FP16 kernels per layer).
* INT8: the QDQ ONNX (explicit quantization: the scales come from our real-image calibration);
  TensorRT's implicit INT8 calibrators are deprecated since 10.1 and are not used.
* One optimization profile for batch 1..max_batch (watch mode runs batch 1, sorting batches).
* A timing cache kept in the bundle (``tensorrt/timing.cache``) so rebuilds on the device are fast.

TensorRT 11 removed the weak-typing flags (FP16/INT8); there the engines are built as strongly
typed networks from the typed ONNX files instead (``model.fp16.onnx`` / ``model.int8.onnx``).
Engines are tied to the GPU and TensorRT version: ``built_for`` records GPU model, compute capability and
TensorRT version, and the runtime refuses an engine whose ``built_for`` differs from the device in any of
them (``dermsort.runtime.backends.trt.built_for_mismatch``). ``export-engines`` builds each precision into
its own temp file and keeps what succeeded: an INT8 failure never discards the FP16 engine.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from . import formats
from .onnx_export import ExportError

log = logging.getLogger(__name__)

MAX_BATCH = 32
OPT_BATCH = 8
WORKSPACE_BYTES = 1 << 30


def tensorrt_status() -> tuple[bool, str]:
    """(True, description) when engines can be built here, else (False, why not)."""
    from dermsort.runtime.backends.trt import TensorRTBackend

    try:
        return TensorRTBackend.available()
    except Exception as exc:  # a driver that is installed but cannot start
        return False, f"TensorRT/CUDA unusable here ({exc})"


def device_info() -> dict[str, Any]:
    """What an engine built now is tied to: GPU name, compute capability, TensorRT version.

    The runtime's own reading of the device (``dermsort.runtime.backends.trt._device_facts``), so the
    ``built_for`` written here is compared field by field with what the runtime sees before loading.
    """
    import tensorrt as trt

    from dermsort.runtime.backends.trt import _cudart, _device_facts

    return _device_facts(trt, _cudart())


def weakly_typed_flags_available() -> bool:
    import tensorrt as trt

    return hasattr(trt.BuilderFlag, "FP16") and hasattr(trt.BuilderFlag, "INT8")


def engine_source(bundle_root: Path, precision: str) -> Path:
    """Which ONNX file an engine of ``precision`` is built from."""
    if precision == "int8":
        return bundle_root / "model.int8.onnx"
    if precision == "fp16" and not weakly_typed_flags_available():
        return bundle_root / "model.fp16.onnx"
    return bundle_root / "model.onnx"


def build_engine(onnx_path: Path, engine_path: Path, precision: str, input_name: str, input_size: int,
                 timing_cache: Path, max_batch: int = MAX_BATCH) -> dict[str, Any]:
    """Parse ``onnx_path``, build and serialise an engine; returns build facts for the manifest."""
    import tensorrt as trt

    if precision not in ("fp16", "int8"):
        raise ExportError(f"TensorRT engines are built at fp16 or int8, not {precision}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    weak = weakly_typed_flags_available()
    flags = 0 if weak else 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(os.fspath(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    cache_blob = timing_cache.read_bytes() if timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_blob)
    config.set_timing_cache(cache, ignore_mismatch=False)
    if weak:
        config.set_flag(trt.BuilderFlag.FP16)  # INT8 engines: layers outside Q/DQ pairs may use FP16 too
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)  # with Q/DQ in the graph this is explicit quantization
    shape = (3, input_size, input_size)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, (1, *shape), (min(OPT_BATCH, max_batch), *shape), (max_batch, *shape))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build the {precision} engine from {onnx_path.name} (see log above)")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = engine_path.with_suffix(".engine.part")
    with open(tmp, "wb") as fh:
        fh.write(memoryview(serialized))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, engine_path)
    timing_cache.write_bytes(memoryview(config.get_timing_cache().serialize()))
    log.info("built %s (%s) from %s", engine_path.name, precision, onnx_path.name)
    return {"source": onnx_path.name, "profile": {"min": 1, "opt": min(OPT_BATCH, max_batch), "max": max_batch},
            "typing": "weak (BuilderFlag)" if weak else "strongly typed", "workspace_bytes": WORKSPACE_BYTES}


# ----------------------------------------------------------------------------- builders (formats.TARGETS rows)

def _ready_to_build() -> tuple[bool, str]:
    ok, why = tensorrt_status()
    return ok, why if ok else f"{why}; build engines on the target device with `dermsort export-engines BUNDLE`"


@formats.builds("tensorrt-fp16", "tensorrt-int8", ready=_ready_to_build)
def _build_engine_target(job: formats.BuildJob, row: formats.Target) -> formats.Built:
    source = engine_source(job.work, row.precision)
    if not source.is_file():
        raise ExportError(f"{source.name} is not in the bundle (export onnx at {row.precision} too)")
    facts = build_engine(source, job.work / row.path, row.precision, job.metadata.input_name,
                         job.metadata.preprocess.input_size, job.work / formats.TIMING_CACHE)
    return formats.Built(build=facts, artifact={"built_for": device_info()})
