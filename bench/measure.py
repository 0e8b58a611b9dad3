"""Timing primitives: model-only latency/throughput in this process, and fresh-process measurements."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

BATCH_SIZES = (1, 4, 8, 16, 32)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def median(values: list[float]) -> float:
    return float(np.median(np.asarray(values, dtype=np.float64)))


def model_latency(predict: Callable[[np.ndarray], Any], tensors: np.ndarray, warmup: int, reps: int) -> dict[str, Any]:
    """Batch-1 latency of ``predict`` over real preprocessed images (cycled), after ``warmup`` calls."""
    n = len(tensors)
    for i in range(warmup):
        predict(tensors[i % n: i % n + 1])
    times = []
    for i in range(reps):
        one = tensors[i % n: i % n + 1]
        start = time.perf_counter()
        predict(one)
        times.append(time.perf_counter() - start)
    return {"p50_ms": percentile(times, 50) * 1e3, "p95_ms": percentile(times, 95) * 1e3,
            "min_ms": min(times) * 1e3, "calls": reps}


def batch_throughput(predict: Callable[[np.ndarray], Any], tensors: np.ndarray, warmup: int, reps: int,
                     max_batch: int = 32, sizes: tuple[int, ...] = BATCH_SIZES) -> dict[int, float]:
    """Images/s per batch size (median call time); each size gets about ``2 * reps`` images, >= 3 calls."""
    result = {}
    for size in sizes:
        if size > max_batch:
            continue
        idx = np.arange(size) % len(tensors)
        batch = np.ascontiguousarray(tensors[idx])
        for _ in range(max(1, min(warmup, 3))):
            predict(batch)
        times = []
        for _ in range(max(3, math.ceil(2 * reps / size))):
            start = time.perf_counter()
            predict(batch)
            times.append(time.perf_counter() - start)
        result[size] = size / median(times)
    return result


def run_worker(spec: dict[str, Any], timeout: float = 600.0) -> dict[str, Any]:
    """Run ``dermsort.bench.worker`` in a fresh interpreter; add the parent's wall clock to its result.

    ``cold_start_s`` is spawn -> the child's ``FIRST`` line: interpreter start, imports, bundle,
    checksum verification, backend load, one image read + decoded + classified.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(spec, fh)
        spec_path = fh.name
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="0")
    try:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "dermsort.bench.worker", spec_path], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
        cold = None
        result: dict[str, Any] | None = None
        assert proc.stdout is not None
        deadline = start + timeout
        for line in proc.stdout:
            if line.startswith("FIRST ") and cold is None:
                cold = time.perf_counter() - start
            elif line.startswith("RESULT "):
                result = json.loads(line[len("RESULT "):])
            if time.perf_counter() > deadline:
                proc.kill()
                break
        stderr = proc.stderr.read() if proc.stderr else ""
        code = proc.wait(timeout=max(1.0, deadline - time.perf_counter()))
        wall = time.perf_counter() - start
    finally:
        os.unlink(spec_path)
    if code != 0 or result is None:
        tail = stderr.strip().splitlines()[-3:] if stderr else []
        raise RuntimeError(f"bench worker failed (exit {code}): {' | '.join(tail) or 'no output'}")
    result["cold_start_s"] = cold
    result["process_wall_s"] = wall
    return result


def warm_page_cache(paths: list[Path]) -> None:
    """Read every file once so that all backends see the same (cached) disk."""
    for path in paths:
        with open(path, "rb") as fh:
            while fh.read(1 << 20):
                pass
