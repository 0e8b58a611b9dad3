"""Every file format reaches the network through the same reduction (runtime/preprocess.py).

JPEG is shrunk by a power of two while decoding (DCT scaling, the path the bundled model was trained
through); PNG/TIFF/BMP/WEBP are shrunk by the same factor with ``Image.reduce`` after decoding.
Measured with the bundled model on ONNX Runtime FP32 over 16 real images (ham10000-sample, ph2,
isic2020-unlabelled, 600x450 to 1872x1053) saved losslessly and as quality-95 JPEG: PNG, TIFF and
BMP give identical p; JPEG differs by at most 0.018 (median 0.001), and no decision changes. Before
the reduction, ISIC_3696488 was benign as JPEG (0.052) and review as PNG (0.068).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from conftest import DATA
from dermsort.runtime.bundle import load_bundle
from dermsort.runtime.engine import open_backend
from dermsort.runtime.preprocess import open_image, preprocess, reduction_factor

#: the largest |p(JPEG q95) - p(lossless)| measured on the 16 images above, rounded up
TOLERANCE = 0.02
IMAGES = ["isic2020-unlabelled/ISIC_3696488.jpg",  # 1872x1053 (factor 4), 0.05 from the threshold
          "isic2020-unlabelled/ISIC_7536704.jpg",  # the largest difference measured
          "isic2020-unlabelled/ISIC_3319229.jpg",  # 640x480 (factor 2)
          "ham10000-sample/images/ISIC_0024319.jpg"]


@pytest.fixture(scope="module")
def engine():
    bundle, _ = load_bundle(None)
    eng = open_backend(bundle, "onnxruntime", "fp32", None)
    yield eng
    eng.close()


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("name", IMAGES)
def test_same_pixels_same_decision_in_every_format(engine, name):
    meta = engine.metadata
    pixels = Image.open(DATA / name).convert("RGB")
    files = {"png": _save(pixels, "PNG"), "tif": _save(pixels, "TIFF"), "bmp": _save(pixels, "BMP"),
             "jpg": _save(pixels, "JPEG", quality=95)}
    tensors = {ext: preprocess(data, meta.preprocess, f"x.{ext}")[0] for ext, data in files.items()}
    probs = engine.predict(np.stack(list(tensors.values())))
    p = dict(zip(tensors, probs[:, meta.malignant_indices()].sum(axis=1).astype(float)))
    # lossless formats: the same pixels, the same path, the same tensor
    assert np.array_equal(tensors["png"], tensors["tif"]) and np.array_equal(tensors["png"], tensors["bmp"])
    assert abs(p["jpg"] - p["png"]) <= TOLERANCE, p
    thr = engine.artifact.threshold
    assert len({v < thr for v in p.values()}) == 1, (p, thr)


def test_reduction_factor_is_the_one_jpeg_draft_picks():
    spec = load_bundle(None)[0].metadata.preprocess
    for name in IMAGES:
        data = (DATA / name).read_bytes()
        w, h = Image.open(io.BytesIO(data)).size
        drafted, _ = open_image(data, spec, name)
        png, _ = open_image(_save(Image.open(io.BytesIO(data)).convert("RGB"), "PNG"), spec, "x.png")
        f = reduction_factor(w, h, spec.resize_shorter)
        assert drafted.size == png.size == (-(-w // f), -(-h // f))
        assert min(png.size) >= spec.resize_shorter
