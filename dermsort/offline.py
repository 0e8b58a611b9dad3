"""Offline for real: switch off the usage telemetry of OpenVINO, NNCF and ONNX Runtime before they load.

``import openvino`` runs ``openvino.tools.ovc``'s telemetry hook (openvino 2024-2026): it writes
``~/intel/openvino_ga_cid`` and ``~/intel/stats`` and forks a ``multiprocessing`` child that sends a
usage event to Google Analytics (3 s timeout); ``import nncf`` does the same through
``nncf.telemetry``. Both libraries only reach that code through ``import openvino_telemetry`` and
fall back to their own no-op stubs when it raises ImportError (``openvino.tools.ovc.telemetry_stub``,
``nncf.telemetry.wrapper.NNCFTelemetryStub``) -- the path taken when the package is not installed.

The other off switches the pinned versions honour are worse for us: the consent file
``~/intel/openvino_telemetry`` containing ``0`` has to be *written* under the user's home, and
``CI=true`` (``disable_in_ci``) would tell every tool in every child process that it runs in CI.
So ``dermsort/__init__`` marks ``openvino_telemetry`` as not importable (``sys.modules[name] = None``,
the documented way to make an import fail): one place, in every process that imports dermsort,
before any dermsort code can import openvino or nncf. Nothing is written, no process is forked.

ONNX Runtime 1.32's Linux wheels carry Microsoft's 1DS telemetry client: ``import onnxruntime`` writes
``~/.cache/Microsoft/DeveloperTools/.onnxruntime/deviceid`` and queues a usage event in ``onnxruntime.db``
beside it for upload to ``mobile.events.data.microsoft.com``. Its native library reads the environment
variable ``ORT_DISABLE_TELEMETRY=1`` when it loads (setting it after ``import onnxruntime`` is too late;
``onnxruntime.disable_telemetry_events()`` does not stop those files either), so it is set here, before
any import of onnxruntime, and child processes (bench workers) inherit it.
"""

from __future__ import annotations

import os
import sys

TELEMETRY_MODULES = ("openvino_telemetry",)
#: environment switches read by native libraries when they load
TELEMETRY_ENV = {"ORT_DISABLE_TELEMETRY": "1"}


def block_telemetry() -> bool:
    """Make ``import openvino_telemetry`` fail and switch ONNX Runtime's telemetry off in this process and its
    children; False if a library was imported already (by the caller's own code, before dermsort: too late
    to stop what ran at that import)."""
    ok = True
    for key, value in TELEMETRY_ENV.items():
        os.environ[key] = value
    if "onnxruntime" in sys.modules:
        ok = False
    for name in TELEMETRY_MODULES:
        if sys.modules.get(name, None) is not None:
            ok = False
            continue
        sys.modules[name] = None  # type: ignore[assignment]
    return ok
