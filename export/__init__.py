"""dermsort.export: checkpoint -> verified model bundle (ONNX / OpenVINO / TensorRT, FP32 / FP16 / INT8).

Entry points: ``export_bundle`` (used by ``dermsort export`` and by train/), ``export_engines``
(``dermsort export-engines``, on the target GPU). Heavy libraries load only when an export runs.
"""

from __future__ import annotations

from typing import Any

__all__ = ["export_bundle", "export_engines"]


def export_bundle(*args: Any, **kwargs: Any):
    """Export a checkpoint into a verified bundle; see dermsort.export.api.export_bundle."""
    from .api import export_bundle as run

    return run(*args, **kwargs)


def export_engines(*args: Any, **kwargs: Any):
    """Build TensorRT engines into a bundle on the target GPU; see dermsort.export.engines.export_engines."""
    from .engines import export_engines as run

    return run(*args, **kwargs)
