"""Where dermsort keeps what it may rebuild: its cache folder and the compiled-model cache of each backend.

Below the backends and the engine (standard library only), so ``backends/ort.py`` and ``ov.py`` import
their cache folder from here without importing ``engine.py``, which imports them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
from pathlib import Path

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """``$DERMSORT_CACHE_DIR``, else ``$XDG_CACHE_HOME/dermsort`` (``~/.cache/dermsort``)."""
    base = os.environ.get("DERMSORT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "dermsort")
    return Path(base)


def compiled_cache_dir(library: str) -> Path | None:
    """Folder for models compiled/optimised by ``library`` (reused across runs), or None when disabled
    (``DERMSORT_COMPILED_CACHE=0``) or not creatable (read-only home): then every run compiles afresh."""
    if os.environ.get("DERMSORT_COMPILED_CACHE", "1").strip().lower() in ("0", "no", "off", "false"):
        return None
    path = cache_dir() / "compiled" / library
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.info("no compiled-model cache (%s): %s", path, exc)
        return None
    return path


def cpu_fingerprint() -> str:
    """Short hash of this CPU's model and instruction-set flags.

    An optimised graph may use layouts/kernels chosen for this CPU (e.g. ONNX Runtime's NCHWc blocking
    for AVX2 vs AVX-512), so a cache shared through a network home must not cross CPUs.
    """
    text = platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("model name", "flags", "Features", "CPU part")):
                    text += line
                elif not line.strip() and "flags" in text:
                    break  # first CPU is enough
    except OSError:
        pass
    return hashlib.sha256(text.encode()).hexdigest()[:12]
