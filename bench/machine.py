"""What machine a benchmark ran on: CPU, cores, RAM, GPU, OS, library versions, load."""

from __future__ import annotations

import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from importlib import metadata as importlib_metadata
from typing import Any

PACKAGES = ("numpy", "pillow", "onnxruntime", "onnxruntime-gpu", "openvino", "torch", "tensorrt", "scikit-learn")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return sorted(f for f in flags if re.match(r"(avx512(f|_vnni|_bf16)|avx2|amx_\w+|avx_vnni|neon)$", f))
    except OSError:
        pass
    return []


def _gpus() -> list[str]:
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def _os_name() -> str:
    try:
        with open("/etc/os-release") as fh:
            for line in fh:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    try:
        from PIL import features

        found["libjpeg-turbo"] = features.version("libjpeg_turbo") or "no"
    except Exception:  # pragma: no cover - very old Pillow
        pass
    return found


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return None


def machine_info() -> dict[str, Any]:
    """A dict that says where numbers came from; safe to put in a committed report (no user names)."""
    import psutil

    return {
        "host": socket.gethostname(),
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "gpus": _gpus() or ["none"],
        "os": _os_name(),
        "kernel": platform.release(),
        "arch": platform.machine(),
        "python": sys.version.split()[0],
        "versions": versions(),
        "load_average_1_5_15": load_average(),
    }


def machine_name(info: dict[str, Any]) -> str:
    """A short folder name for committed results, e.g. ``amd-epyc-2cpu``."""
    cpu = re.sub(r"\((r|tm)\)|cpu|processor|@.*$|\d+-core", "", info["cpu"].lower())
    cpu = re.sub(r"[^a-z0-9]+", "-", cpu).strip("-")[:40] or info["arch"]
    gpu = "" if info["gpus"] == ["none"] else "-" + re.sub(r"[^a-z0-9]+", "-", info["gpus"][0].split(",")[0].lower()).strip("-")
    return f"{cpu}-{info['logical_cores']}cpu{gpu}"


def command_line() -> str:
    """How this run was started, without the interpreter's install path (reports get committed)."""
    import sys

    first = os.path.basename(sys.argv[0]) if sys.argv else ""
    if first == "__main__.py" or first.endswith(".py"):
        module = {"pipeline.py": "studies.pipeline", "devmodel.py": "studies.devmodel"}.get(first, first)  # studies/
        first = f"python -m {module}"
    return " ".join([first, *sys.argv[1:]])
