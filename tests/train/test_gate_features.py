"""The not-dermoscopy gate's features: the penultimate vector, optionally with the spatial means of earlier
stages (issue 25: what the classifier was trained to ignore, such as the camera, is what tells a clinical
photo from a dermoscopy image). Real EfficientNet-Lite0 graph (random weights: no download), real ONNX
Runtime session on the exported graph."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the gate is built on the train side (pip install -e '.[train]')")

from dermsort.train.gate import GatedClassifier, layer_widths  # noqa: E402
from dermsort.train.gate_fit import _columns, candidate_feature_sets  # noqa: E402
from dermsort.train.models import build_model  # noqa: E402


def _gate(width: int, layers: list[int]) -> dict:
    rng = np.random.default_rng(0)
    return {"use": ["probe"], "layers": layers, "feature_mean": rng.standard_normal(width).astype(np.float32),
            "probe": {"weight": rng.standard_normal(width).astype(np.float32) / np.sqrt(width), "bias": 0.1,
                      "offset": 0.0, "scale": 1.0}}


@pytest.fixture(scope="module")
def lite0():
    torch.manual_seed(0)
    return build_model("efficientnet_lite0", 7, pretrained=False).eval()


def test_stage_means_come_first_and_are_the_stage_outputs(lite0):
    assert layer_widths(lite0, "efficientnet_lite0", [1, 2, 3]) == [16, 24, 40]
    gated = GatedClassifier(lite0, "efficientnet_lite0", None, _gate(1280 + 16 + 40, [1, 3]))
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        feats, logits = gated.features_and_logits(x)
        # by hand: stem, then the blocks of stage 1 (block 0) and stage 3 (blocks 3-4) of Lite0
        h = torch.nn.functional.relu6(lite0._bn0(lite0._conv_stem(x)))
        outs = []
        for i, block in enumerate(lite0._blocks[:5]):
            h = block(h)
            outs.append(h)
        stage1, stage3 = outs[0].mean(dim=(2, 3)), outs[4].mean(dim=(2, 3))
    assert feats.shape == (2, 16 + 40 + 1280)
    np.testing.assert_allclose(feats[:, :16].numpy(), stage1.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(feats[:, 16:56].numpy(), stage3.numpy(), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        plain = GatedClassifier(lite0, "efficientnet_lite0", None, _gate(1280, []))
        pen, plain_logits = plain.features_and_logits(x)
    np.testing.assert_allclose(feats[:, 56:].numpy(), pen.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits.numpy(), plain_logits.numpy(), rtol=1e-5, atol=1e-6)
    # no hook is left behind: the plain model runs as before
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in lite0.modules())


def test_candidate_columns_pick_their_stages_from_one_extraction():
    assert candidate_feature_sets(9)[""] == [] and candidate_feature_sets(3) == {"": []}
    cols = _columns([1, 3], taps=[1, 2, 3], tap_widths=[16, 24, 40], width=1280)
    assert list(cols[:16]) == list(range(16)) and list(cols[16:56]) == list(range(40, 80))
    assert list(cols[56:]) == list(range(80, 80 + 1280))


def test_exported_graph_computes_the_same_gate_with_stage_features(lite0, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="the runtime extra installs onnxruntime")
    gated = GatedClassifier(lite0, "efficientnet_lite0", "hflip", _gate(1280 + 16 + 24 + 40, [1, 2, 3])).eval()
    x = torch.randn(3, 3, 96, 96)
    path = tmp_path / "gated.onnx"
    torch.onnx.export(gated, (x[:1],), str(path), input_names=["input"], output_names=["out"], opset_version=17,
                      dynamic_axes={"input": {0: "batch"}, "out": {0: "batch"}}, dynamo=False)
    with torch.no_grad():
        expected = gated(x).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # the stage features matter: the same gate without them scores differently
    plain = GatedClassifier(lite0, "efficientnet_lite0", "hflip", {**_gate(1280, []), "layers": []}).eval()
    with torch.no_grad():
        assert not np.allclose(plain(x).numpy()[:, -1], expected[:, -1])
