"""Write each artifact's decision record (its threshold, its gate verdict) into the model file itself.

The parity gate sets each artifact's threshold after the file was written, so this runs last, before the
manifest: the ONNX file gets a ``metadata_props`` entry, the OpenVINO IR an ``rt_info`` entry (both under
``ARTIFACT_RECORD_KEY``, beside the metadata JSON the export already embeds), and the artifact's sha256 is
taken again. The runtime compares the manifest's ``artifacts[*].threshold`` with it on every load
(runtime/backends/base.py), so an edit of the manifest alone - even one whose integrity record was
recomputed - is refused. Weights are never touched: the ONNX graph is re-saved as it is, the IR's XML gets one
line and its .bin stays byte-identical. TensorRT engines carry no metadata: only a signature covers them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable
from xml.sax.saxutils import quoteattr

from dermsort.runtime.bundle import Artifact
from dermsort.runtime.fileops import sha256_file
from dermsort.runtime.metadata import ARTIFACT_RECORD_KEY

from .onnx_export import ExportError


def artifact_record(artifacts: Iterable[Artifact]) -> str:
    """The JSON stored in one file: every artifact that runs this file (openvino-fp16 and -bf16 share an IR)."""
    return json.dumps({a.name: {"threshold": float(a.threshold), "rejected": bool(a.rejected)}
                       for a in artifacts}, sort_keys=True)


def _embed_onnx(path: Path, value: str) -> None:
    import onnx

    proto = onnx.load(os.fspath(path))
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key != ARTIFACT_RECORD_KEY]
    del proto.metadata_props[:]
    for key, text in [*keep, (ARTIFACT_RECORD_KEY, value)]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, text
    onnx.save(proto, os.fspath(path))


def _embed_ir(path: Path, value: str) -> None:
    """One line in the model-level ``<rt_info>`` (the last one in the file; layers have their own)."""
    text = path.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines(keepends=True)
             if not line.lstrip().startswith(f"<{ARTIFACT_RECORD_KEY} ")]
    text = "".join(lines)
    end = text.rfind("</rt_info>")
    if end < 0 or text[end + len("</rt_info>"):].strip() != "</net>":
        raise ExportError(f"{path.name}: no model-level rt_info to record the artifact's threshold in")
    line_start = text.rfind("\n", 0, end) + 1
    indent = text[line_start:end]
    entry = f"{indent}\t<{ARTIFACT_RECORD_KEY} value={quoteattr(value)} />\n"
    path.write_text(text[:line_start] + entry + text[line_start:], encoding="utf-8")


def _read_back(path: Path) -> str | None:
    if path.suffix == ".onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(os.fspath(path), load_external_data=False).metadata_props}
        return props.get(ARTIFACT_RECORD_KEY)
    import openvino as ov

    model = ov.Core().read_model(os.fspath(path))
    return model.get_rt_info(ARTIFACT_RECORD_KEY).astype(str) if model.has_rt_info(ARTIFACT_RECORD_KEY) else None


def embed_artifact_records(root: Path, artifacts: list[Artifact]) -> None:
    """Write every artifact's threshold and verdict into its model file (ONNX / OpenVINO IR) and refresh the
    artifact's sha256 and size; other formats are left as they are."""
    by_path: dict[str, list[Artifact]] = {}
    for art in artifacts:
        by_path.setdefault(art.path, []).append(art)
    for rel, sharing in by_path.items():
        path = root / rel
        if path.suffix not in (".onnx", ".xml"):
            continue
        value = artifact_record(sharing)
        (_embed_onnx if path.suffix == ".onnx" else _embed_ir)(path, value)
        if _read_back(path) != value:
            raise ExportError(f"{rel}: the artifact record written into the file does not read back")
        digest = sha256_file(path)
        for art in sharing:
            art.sha256 = digest
            art.size_bytes = path.stat().st_size + sum((root / extra).stat().st_size for extra in art.extra_files)
