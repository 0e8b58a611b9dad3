"""dermsort: offline triage of dermoscopy images into benign/ and review/."""

from .offline import block_telemetry as _block_telemetry

__version__ = "0.1.0"

# before anything can import openvino / nncf: their usage telemetry must never run (see offline.py)
_block_telemetry()
