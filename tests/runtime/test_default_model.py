"""The bundled default model: intact, what its metadata and model card say, every accepted artifact gated
on a gate set large enough to mean something, and the same decisions from every backend on real images."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from dermsort.runtime.backends.base import create_backend
from dermsort.runtime.bundle import DEFAULT_BUNDLE, load_bundle
from dermsort.runtime.preprocess import preprocess_file

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"
HAM7 = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


@pytest.fixture(scope="module")
def bundle():
    b, _ = load_bundle(DEFAULT_BUNDLE)
    return b


def test_every_artifact_verifies_and_metadata_describes_the_v2_model(bundle):
    for artifact in bundle.artifacts:
        bundle.verify(artifact)  # sha256 of every file against the manifest
    meta = bundle.metadata
    assert meta.classes == HAM7 and set(meta.malignant_classes) == {"mel", "bcc", "akiec"}
    assert meta.development_model and "not a medical device" in meta.intended_use
    basis = meta.validation.threshold_basis
    # the operating threshold is the binding set's, and the rule covered every large val set and pooled
    assert meta.threshold == pytest.approx(basis["sets"][basis["binding"]]["threshold"])
    assert {"pooled", "ham10000", "isic2019"} <= set(basis["sets"])
    assert all(v["n_malignant"] >= basis["min_malignant"] for k, v in basis["sets"].items() if k != "pooled")
    assert meta.validation.per_diagnosis["melanoma"]["n"] > 100 and meta.validation.per_dataset
    size_mb = next(a for a in bundle.artifacts if a.name == "onnx-fp32").size_bytes / 1e6
    assert size_mb <= 25  # edge limit for the FP32 model


def test_model_card_is_generated_for_this_bundle(bundle):
    card = (REPO / "docs" / "MODEL_CARD.md").read_text()
    assert bundle.metadata.model_id in card and "no figure here is typed by hand" in card
    assert f"{bundle.metadata.threshold:.6g}" in card


def test_model_card_states_the_bundled_preprocessing(bundle):
    """The card's preprocessing line is the metadata's (the model uses (x - 127) / 128, not ImageNet mean/std)."""
    import dataclasses

    from dermsort.train.model_card import preprocessing_line

    card = (REPO / "docs" / "MODEL_CARD.md").read_text()
    pre = bundle.metadata.preprocess
    lines = [l for l in card.splitlines() if l.startswith("- Preprocessing")]
    assert lines == [preprocessing_line(dataclasses.asdict(pre))]
    if len(set(pre.mean)) == 1:
        assert f"(x - {pre.mean[0]:g}) / {pre.std[0]:g}" in lines[0]
    assert "0.485" not in card or pre.mean[0] == 0.485  # no stray ImageNet statistics


def test_accepted_artifacts_passed_a_large_gate_and_rejected_ones_are_recorded(bundle):
    gate = bundle.extra["export"]["parity"]
    assert gate["ran"] and gate["n_images"] >= 1000 and gate["n_malignant"] >= 250
    names = {a.name for a in bundle.artifacts}
    # model v3: every INT8 artifact failed the parity gate at the screening threshold; each is listed with why
    rejected = {r["name"]: r["reason"] for r in bundle.extra["export"].get("rejected", [])}
    assert not (names & set(rejected)) and all("REJECTED" in why for why in rejected.values())
    for artifact in bundle.artifacts:
        assert artifact.parity["status"] in ("reference", "passed"), artifact.name
        if artifact.parity["status"] == "passed":
            # the clinical rules: sensitivity kept, specificity within 2 points, flips bounded
            assert artifact.parity["sensitivity"] >= artifact.parity["sensitivity_reference"] - 0.01
            assert artifact.parity["specificity_drop"] <= 0.02 + 1e-9
            assert artifact.parity["malignant_to_benign"] <= artifact.parity["malignant_to_benign_allowed"]


def test_every_backend_decides_alike_on_real_val_images(bundle):
    with open(DATA / "ham10000" / "labels.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "val"][:24]
    batch = np.stack([preprocess_file(DATA / "ham10000" / r["file"], bundle.metadata.preprocess)[0] for r in rows])
    results = {}
    for artifact in bundle.artifacts:
        backend_name = artifact.backend
        try:
            runner = create_backend(backend_name, bundle, artifact)
            with runner:
                probs = runner.predict(batch)
        except Exception as exc:  # noqa: BLE001 - a backend this machine lacks is reported, not hidden
            pytest.fail(f"{artifact.name} on {backend_name} did not run here: {exc}")
        assert probs.shape == (len(rows), 7)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-3)
        results[artifact.name] = (runner.p_malignant(probs) >= artifact.threshold, runner.p_malignant(probs))
    ref_review, ref_p = results["onnx-fp32"]
    for name, (review, p) in results.items():
        # 24 images, flips bounded by the gate's 2 %: at most one may differ
        assert int((review != ref_review).sum()) <= 1, name
        assert np.corrcoef(p, ref_p)[0, 1] > 0.95, name
