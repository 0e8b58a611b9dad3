"""Build a tiny real model and export it for real (torch -> ONNX -> OpenVINO IR) into a bundle.

Used by the runtime tests, which must not depend on export/ (it has its own tests).
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import numpy as np

from dermsort.runtime.bundle import Bundle, make_artifact, write_manifest
from dermsort.runtime.metadata import ARTIFACT_RECORD_KEY, ONNX_METADATA_KEY, ModelMetadata, PreprocessSpec, Validation

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _tiny_model(n_classes: int = 2, logit_scale: float = 1.0):
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, n_classes), nn.Softmax(dim=1))
    if logit_scale != 1.0:  # sharper outputs: the top class differs between real images
        with torch.no_grad():
            model[6].weight.mul_(logit_scale)
    return model.eval()


def make_tiny_bundle(root: Path, openvino: bool = True, classes: list[str] | None = None,
                     malignant_classes: list[str] | None = None, model_id: str = "tiny-test-cnn",
                     validation: Validation | None = None, logit_scale: float = 1.0) -> Path:
    """The default is the binary benign/malignant head; ``classes`` gives e.g. a 7-class diagnosis head
    (``logit_scale`` > 1 makes its top class vary between images)."""
    import onnx
    import torch

    from dermsort.runtime.preprocess import preprocess_file

    spec = PreprocessSpec(input_size=64, resize_shorter=64)
    classes = classes or ["benign", "malignant"]
    malignant_classes = malignant_classes or ["malignant"]
    meta = ModelMetadata(model_id=model_id, architecture="tiny_cnn", classes=classes,
                         malignant_classes=malignant_classes, threshold=0.5, preprocess=spec,
                         validation=validation or Validation(split="none (test model)"), development_model=True)
    model = _tiny_model(len(classes), logit_scale)
    onnx_path = root / "model.onnx"
    torch.onnx.export(model, torch.zeros(1, 3, 64, 64), str(onnx_path), input_names=["input"],
                      output_names=["probabilities"], dynamic_axes={"input": {0: "batch"}, "probabilities": {0: "batch"}},
                      opset_version=17, dynamo=False)
    # a threshold in the middle of the tiny model's outputs on real images, so both decisions occur
    images = sorted(glob.glob(str(DATA / "ham10000-sample" / "images" / "*.jpg")))[:16]
    batch = np.stack([preprocess_file(p, spec)[0] for p in images])
    with torch.no_grad():
        p_mal = model(torch.from_numpy(batch))[:, meta.malignant_indices()].sum(dim=1).numpy()
    meta.threshold = float(np.median(p_mal))

    def artifact_record(name: str) -> str:
        return json.dumps({name: {"threshold": meta.threshold, "rejected": False}})
    # as the export writes them: the metadata, and each artifact's threshold and gate verdict (export/seal.py)
    proto = onnx.load(str(onnx_path))
    for key, value in ((ONNX_METADATA_KEY, meta.to_json()), (ARTIFACT_RECORD_KEY, artifact_record("onnx-fp32"))):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(onnx_path))
    artifacts = [make_artifact(root, "model.onnx", name="onnx-fp32", backend="onnxruntime", precision="fp32",
                               threshold=meta.threshold)]
    if openvino:
        import openvino as ov

        os.makedirs(root / "openvino", exist_ok=True)
        ir = ov.convert_model(str(onnx_path))
        ir.set_rt_info(meta.to_json(), ONNX_METADATA_KEY)
        ir.set_rt_info(artifact_record("openvino-fp16"), ARTIFACT_RECORD_KEY)
        ov.save_model(ir, str(root / "openvino" / "model_fp16.xml"), compress_to_fp16=True)
        artifacts.append(make_artifact(root, "openvino/model_fp16.xml", name="openvino-fp16", backend="openvino",
                                       precision="fp16", threshold=meta.threshold,
                                       extra_files=["openvino/model_fp16.bin"]))
    write_manifest(Bundle(root=root, metadata=meta, artifacts=artifacts, reference="model.onnx", created="test"))
    return root
