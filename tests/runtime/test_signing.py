"""A model bundle edited to change decisions never runs without a word (issue 27, section 1).

Real bundles: a tiny CNN exported for real by ``export_bundle`` (ONNX FP32/FP16, OpenVINO FP32/FP16, gated on
the labelled val splits, signed with ``sign_key``), and the runtime's tiny bundle; real ONNX Runtime and
OpenVINO sessions through the installed ``dermsort`` console script.

- Without a signature: each artifact's threshold and gate verdict live inside its own model file (ONNX
  ``metadata_props`` / OpenVINO ``rt_info``) and must equal the manifest's, so an edited threshold whose
  integrity record was recomputed is refused.
- With a signature (ed25519 over the sha256 of every file): any edit - a swapped model file carrying the
  original's embedded metadata, an edited verification image, a signature taken from another bundle - is
  refused; a key that is not trusted is flagged, and refused under ``--require-signed``.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason='signing tests export a real model: pip install "dermsort[export]"')

from dermsort.export import api  # noqa: E402
from dermsort.runtime.bundle import decision_digest, load_bundle, write_manifest  # noqa: E402
from dermsort.runtime.errors import ModelError  # noqa: E402
from dermsort.runtime.metadata import ARTIFACT_RECORD_KEY, ONNX_METADATA_KEY  # noqa: E402
from dermsort.runtime.signing import SIGNATURE, generate_key, sign_bundle  # noqa: E402
from fault_harness import small_real_images  # noqa: E402
from test_export import CSVS, SPEC, TinyCNN, _fake_train_models, train_tiny_checkpoint  # noqa: E402

CONSOLE = Path(sys.executable).with_name("dermsort")


# ------------------------------------------------------------------------------------------------ helpers
def _console(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    assert CONSOLE.is_file(), f"the dermsort console script is not installed beside {sys.executable}"
    return subprocess.run([str(CONSOLE), *args], capture_output=True, text=True, timeout=180, env=env)


def _images(folder: Path, n: int = 6) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for p in small_real_images(n, 0):
        shutil.copyfile(p, folder / p.name)
    return folder


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _reseal(bundle: Path, edit) -> None:
    """Edit the manifest and recompute its integrity record, as anyone can (decision_digest is public)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    edit(manifest)
    manifest.pop("integrity", None)
    manifest["integrity"] = {"sha256": decision_digest(manifest)}
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _one_line_refusal(res: subprocess.CompletedProcess, needle: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dermsort: error:") and needle in lines[0], res.stderr


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    """A trusted key (its .pub in the test's trusted-keys folder) and one that is trusted nowhere."""
    folder = tmp_path_factory.mktemp("keys")
    trusted, trusted_pub, _ = generate_key(folder / "clinic.key")
    stranger, _, _ = generate_key(folder / "stranger.key")
    return {"trusted": trusted, "trusted_pub": trusted_pub, "stranger": stranger}


@pytest.fixture(autouse=True)
def _config(tmp_path, monkeypatch, keys) -> Path:
    """Each test's own $XDG_CONFIG_HOME, trusting the test key; no signature policy from the environment."""
    config = tmp_path / "config"
    (config / "dermsort" / "trusted-keys").mkdir(parents=True)
    shutil.copyfile(keys["trusted_pub"], config / "dermsort" / "trusted-keys" / "clinic.pub")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    monkeypatch.delenv("DERMSORT_REQUIRE_SIGNED", raising=False)
    return config


@pytest.fixture(scope="module")
def signed_export(tmp_path_factory, keys) -> Path:
    """A tiny CNN trained briefly on the real train splits, exported for real and signed with the trusted key."""
    ckpt = train_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint.pt", 30, "test-signed-cnn")
    out = tmp_path_factory.mktemp("export") / "bundle"
    config = tmp_path_factory.mktemp("config")
    (config / "dermsort" / "trusted-keys").mkdir(parents=True)
    shutil.copyfile(keys["trusted_pub"], config / "dermsort" / "trusted-keys" / "clinic.pub")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "dermsort.train.models", _fake_train_models())
        mp.setenv("XDG_CONFIG_HOME", str(config))
        api.export_bundle(ckpt, out, to="onnx,openvino", precisions="fp32,fp16", labelled=CSVS, latency_reps=1,
                          allow_parity_failure=True, sign_key=keys["trusted"])
        signed = load_bundle(out)[0].signature
    assert signed.trusted and signed.files == sum(1 for p in out.rglob("*") if p.is_file()) - 1  # export signed all
    # the val images are too large for a verification set (1 MB cap): add one from small real images, which
    # rewrites the manifest (so drops the signature), then sign again - as `dermsort sign` does
    from dermsort.export import verify_set

    verify_set.build(out, small_real_images(120, 0))
    assert not (out / SIGNATURE).exists() and any((out / "verify").glob("*.jpg"))
    sign_bundle(out, keys["trusted"])
    return out


def _copy(bundle: Path, dst: Path, signed: bool = True) -> Path:
    shutil.copytree(bundle, dst)
    if not signed:
        (dst / SIGNATURE).unlink()
    return dst


def _embedded_record(path: Path) -> dict:
    if path.suffix == ".onnx":
        import onnx

        return json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}[ARTIFACT_RECORD_KEY])
    import openvino as ov

    return json.loads(ov.Core().read_model(str(path)).get_rt_info(ARTIFACT_RECORD_KEY).astype(str))


# ------------------------------------------------------------------------------- embedded thresholds
def test_export_writes_each_artifacts_final_threshold_into_its_own_file(signed_export):
    """The export path end to end: after the gate recalibrated them, every artifact's threshold and verdict are in
    its ONNX metadata_props / OpenVINO rt_info, the manifest's checksums cover those files, and the real
    backends find them equal on load."""
    from dermsort.runtime.backends.base import create_backend

    bundle, _ = load_bundle(signed_export)
    names = {a.name for a in bundle.artifacts}
    assert {"onnx-fp32", "onnx-fp16", "openvino-fp32", "openvino-fp16"} <= names, names
    for art in bundle.artifacts:
        record = _embedded_record(signed_export / art.path)
        assert record[art.name] == {"threshold": art.threshold, "rejected": art.rejected}, art.name
        bundle.verify(art)  # the sha256 in the manifest is that of the file with the record in it
        engine = create_backend(art.backend, bundle, art).load()
        assert engine.embedded_check == "ok", art.name
        engine.close()
    assert bundle.signature.trusted and bundle.signature.describe().startswith("signed by ")


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_resealed_per_artifact_threshold_is_refused_without_a_signature(signed_export, tmp_path, backend):
    """The issue's reproduction: every artifacts[*].threshold set to 0.999, integrity record recomputed, no
    signature to fall back on: refused with one line, nothing sorted; `info` says FAILED."""
    bundle = _copy(signed_export, tmp_path / "b", signed=False)
    _reseal(bundle, lambda m: [a.update(threshold=0.999) for a in m["artifacts"]])
    res = _console("sort", str(_images(tmp_path / "in")), "--out", str(tmp_path / "o"), "--model", str(bundle),
                   "--backend", backend)
    _one_line_refusal(res, "differs from the threshold")
    assert "0.999" in res.stderr and not (tmp_path / "o").exists()
    info = _console("info", "--model", str(bundle), "--json")
    assert info.returncode == 0, info.stderr
    checks = {a["name"]: a["embedded_threshold"] for a in json.loads(info.stdout)["artifacts"]}
    assert all(v.startswith("FAILED") for v in checks.values()), checks


def test_resealed_gate_verdict_is_refused(signed_export, tmp_path):
    """An artifact's verdict flipped in the manifest (accepted -> rejected+override) no longer matches its file."""
    bundle = _copy(signed_export, tmp_path / "b", signed=False)
    _reseal(bundle, lambda m: [a.update(accepted=False, override="--allow-parity-failure: edited")
                               for a in m["artifacts"] if a["name"] == "onnx-fp16"])
    res = _console("sort", str(_images(tmp_path / "in", 2)), "--out", str(tmp_path / "o"), "--model", str(bundle),
                   "--backend", "onnxruntime", "--precision", "fp16", "--allow-rejected-artifact")
    _one_line_refusal(res, "parity-gate verdict for onnx-fp16 differs")


def test_bundle_without_embedded_thresholds_warns_unless_signed(tiny_bundle, tmp_path, keys):
    """Bundles exported before thresholds were embedded still run, with a WARNING; signed by a trusted key, the
    signature covers their manifest and no warning is needed; unsigned under --require-signed they are refused."""
    import onnx

    bundle = shutil.copytree(tiny_bundle, tmp_path / "old")
    proto = onnx.load(str(bundle / "model.onnx"))
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key != ARTIFACT_RECORD_KEY]
    del proto.metadata_props[:]
    for key, value in keep:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(bundle / "model.onnx"))
    from dermsort.runtime.fileops import sha256_file

    digest = sha256_file(bundle / "model.onnx")
    _reseal(bundle, lambda m: [a.update(sha256=digest) for a in m["artifacts"] if a["name"] == "onnx-fp32"])
    inp = _images(tmp_path / "in", 2)
    res = _console("sort", str(inp), "--out", str(tmp_path / "o1"), "--model", str(bundle), "--backend", "onnxruntime")
    assert res.returncode == 0, res.stderr
    assert "WARNING" in res.stderr and "carries no embedded threshold" in res.stderr
    _one_line_refusal(_console("sort", str(inp), "--out", str(tmp_path / "o2"), "--model", str(bundle), "--backend",
                               "onnxruntime", "--require-signed"), "requires a bundle signed by a trusted key")
    sign_bundle(bundle, keys["trusted"])
    res = _console("sort", str(inp), "--out", str(tmp_path / "o3"), "--model", str(bundle), "--backend", "onnxruntime",
                   "--require-signed")
    assert res.returncode == 0 and "WARNING" not in res.stderr, res.stderr


# ----------------------------------------------------------------------------------------- signatures
def _always_benign_onnx(path: Path, metadata_from: Path) -> None:
    """Another valid model of the same shape that answers "benign" for every image, carrying the original file's
    embedded metadata and artifact record (both copied verbatim)."""
    import onnx

    model = TinyCNN(2).eval()
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.tensor([8.0, -8.0]))
    wrapped = torch.nn.Sequential(model, torch.nn.Softmax(dim=1)).eval()
    torch.onnx.export(wrapped, torch.zeros(1, 3, 64, 64), str(path), input_names=["input"],
                      output_names=["probabilities"], dynamic_axes={"input": {0: "batch"}, "probabilities": {0: "batch"}},
                      opset_version=17, dynamo=False)
    original = {p.key: p.value for p in onnx.load(str(metadata_from)).metadata_props}
    proto = onnx.load(str(path))
    for key in (ONNX_METADATA_KEY, ARTIFACT_RECORD_KEY):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, original[key]
    onnx.save(proto, str(path))


def test_swapped_model_file_with_the_originals_metadata(signed_export, tmp_path):
    """A model that always says benign, given the original's embedded metadata and threshold and a manifest
    resealed around it: the signature refuses it. Unsigned, nothing else can tell (a sha256 and copied metadata
    are not proof): it runs, and every output says "unsigned (locally built)"; --require-signed refuses it."""
    from dermsort.runtime.fileops import sha256_file

    def swap(bundle: Path) -> None:
        _always_benign_onnx(tmp_path / "evil.onnx", bundle / "model.onnx")
        shutil.copyfile(tmp_path / "evil.onnx", bundle / "model.onnx")
        digest, size = sha256_file(bundle / "model.onnx"), (bundle / "model.onnx").stat().st_size
        _reseal(bundle, lambda m: [a.update(sha256=digest, size_bytes=size) for a in m["artifacts"]
                                   if a["path"] == "model.onnx"])

    inp = _images(tmp_path / "in")
    signed = _copy(signed_export, tmp_path / "signed")
    swap(signed)
    res = _console("sort", str(inp), "--out", str(tmp_path / "o1"), "--model", str(signed), "--backend",
                   "onnxruntime", "--precision", "fp32")
    _one_line_refusal(res, "does not match its signature")
    assert "model.onnx" in res.stderr and not (tmp_path / "o1").exists()

    unsigned = _copy(signed_export, tmp_path / "unsigned", signed=False)
    swap(unsigned)
    res = _console("sort", str(inp), "--out", str(tmp_path / "o2"), "--model", str(unsigned), "--backend",
                   "onnxruntime", "--precision", "fp32", "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["benign"] == 6 and summary["signature"] == "unsigned (locally built)"  # the attack, flagged
    assert {r["signature"] for r in _rows(tmp_path / "o2")} == {"unsigned (locally built)"}
    _one_line_refusal(_console("sort", str(inp), "--out", str(tmp_path / "o3"), "--model", str(unsigned), "--backend",
                               "onnxruntime", "--precision", "fp32", "--require-signed"),
                      "requires a bundle signed by a trusted key")


@pytest.mark.parametrize("other_kind", ["another-model", "same-model-other-files"])
def test_valid_signature_over_a_different_bundle_is_refused(signed_export, tiny_bundle, tmp_path, keys, other_kind):
    """A genuine signature (trusted key) copied from another bundle onto this one does not vouch for it: neither
    one of another model, nor one of the same model id whose files differ (e.g. an earlier signed release)."""
    if other_kind == "another-model":
        other = shutil.copytree(tiny_bundle, tmp_path / "other")
    else:
        other = _copy(signed_export, tmp_path / "other", signed=False)
        (other / "export_report.md").write_text("an earlier release\n")
    sign_bundle(other, keys["trusted"])
    assert load_bundle(other)[0].signature.trusted
    target = _copy(signed_export, tmp_path / "target", signed=False)
    shutil.copyfile(other / SIGNATURE, target / SIGNATURE)
    with pytest.raises(ModelError, match="does not verify|does not match its signature"):
        load_bundle(target)
    res = _console("sort", str(_images(tmp_path / "in", 2)), "--out", str(tmp_path / "o"), "--model", str(target))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "signature" in res.stderr and not (tmp_path / "o").exists()


@pytest.mark.parametrize("victim", ["manifest.json", "openvino/model_fp16.bin", "verify", "export_report.md", "added"])
def test_any_edited_file_in_a_signed_bundle_is_refused(signed_export, tmp_path, victim):
    """The signature covers every file: the manifest, artifact weights, the verification set, the report, and no
    file may be added. Each edit is refused by sort (even of a file sort does not load) and by info."""
    bundle = _copy(signed_export, tmp_path / "b")
    if victim == "manifest.json":
        _reseal(bundle, lambda m: m["metadata"]["validation"].update(sensitivity=0.999))  # consistent, resealed
    elif victim == "verify":
        image = sorted((bundle / "verify").glob("*.jpg"))[0]
        image.write_bytes(image.read_bytes()[:-10] + b"\0" * 10)
    elif victim == "added":
        (bundle / "openvino" / "extra.xml").write_text("<net/>")
    else:
        path = bundle / victim
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    res = _console("sort", str(_images(tmp_path / "in", 2)), "--out", str(tmp_path / "o"), "--model", str(bundle),
                   "--backend", "onnxruntime", "--precision", "fp32")
    _one_line_refusal(res, "does not match its signature")
    assert not (tmp_path / "o").exists()
    assert _console("info", "--model", str(bundle)).returncode == 2


@pytest.mark.parametrize("how", ["flag", "env", "config"])
def test_unsigned_bundle_is_refused_when_signatures_are_required(tiny_bundle, tmp_path, _config, how):
    import os

    env, args = dict(os.environ), []
    if how == "flag":
        args = ["--require-signed"]
    elif how == "env":
        env["DERMSORT_REQUIRE_SIGNED"] = "1"
    else:
        (_config / "dermsort" / "config.toml").write_text("require_signed = true\n")
    inp = _images(tmp_path / "in", 2)
    res = _console("sort", str(inp), "--out", str(tmp_path / "o"), "--model", str(tiny_bundle), *args, env=env)
    _one_line_refusal(res, "unsigned (locally built)")
    assert not (tmp_path / "o").exists()
    _one_line_refusal(_console("info", "--model", str(tiny_bundle), *args, env=env), "requires a bundle signed")
    res = _console("watch", str(inp), "--out", str(tmp_path / "w"), "--model", str(tiny_bundle), "--max-cycles", "1",
                   *args, env=env)
    _one_line_refusal(res, "requires a bundle signed")
    # the same setting without it: runs
    if how == "env":
        env["DERMSORT_REQUIRE_SIGNED"] = "0"
        assert _console("sort", str(inp), "--out", str(tmp_path / "o0"), "--model", str(tiny_bundle),
                        env=env).returncode == 0


def test_signed_bundle_says_who_signed_it_everywhere(signed_export, tmp_path):
    """info, the sort summary (terminal and --json), every results.csv row (appended column) and report.html."""
    bundle, _ = load_bundle(signed_export)
    said = f"signed by {bundle.signature.key_id}"
    info = _console("info", "--model", str(signed_export), "--require-signed")
    assert info.returncode == 0 and f"signature    {said}" in info.stdout, info.stderr
    inp = _images(tmp_path / "in", 3)
    res = _console("sort", str(inp), "--out", str(tmp_path / "o"), "--model", str(signed_export), "--require-signed")
    assert res.returncode == 0 and f"model bundle {said}" in res.stdout and "WARNING" not in res.stderr, res.stderr
    res = _console("sort", str(inp), "--out", str(tmp_path / "j"), "--model", str(signed_export), "--json")
    assert json.loads(res.stdout)["signature"] == said
    with open(tmp_path / "o" / "results.csv", newline="") as fh:
        header = next(csv.reader(fh))
    from dermsort.runtime.results_csv import RESULT_FIELDS

    assert header == RESULT_FIELDS and header.index("signature") > header.index("site_profile")  # appended
    assert {r["signature"] for r in _rows(tmp_path / "o")} == {said}
    assert said in (tmp_path / "o" / "report.html").read_text()


def test_untrusted_key_is_flagged_and_refused_when_required(tiny_bundle, tmp_path, keys):
    """`dermsort keygen` + `dermsort sign` with a key this machine does not trust: a WARNING and "UNTRUSTED" on
    every row; under --require-signed refused. Trusting its public key makes it signed."""
    key = tmp_path / "mine.key"
    res = _console("keygen", str(key))
    assert res.returncode == 0 and key.is_file() and (tmp_path / "mine.key.pub").is_file(), res.stderr
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    bundle = shutil.copytree(tiny_bundle, tmp_path / "b")
    res = _console("sign", str(bundle), "--key", str(key))
    assert res.returncode == 0 and "not trusted" in res.stdout, res.stdout + res.stderr
    inp = _images(tmp_path / "in", 2)
    res = _console("sort", str(inp), "--out", str(tmp_path / "o"), "--model", str(bundle))
    assert res.returncode == 0 and "not trusted here" in res.stderr, res.stderr
    assert all(r["signature"].startswith("signed by UNTRUSTED key") for r in _rows(tmp_path / "o"))
    _one_line_refusal(_console("sort", str(inp), "--out", str(tmp_path / "o2"), "--model", str(bundle),
                               "--require-signed"), "requires a bundle signed by a trusted key")


def test_rewriting_the_manifest_drops_the_signature(tiny_bundle, tmp_path, keys):
    """Tools that change a bundle (export-engines, the verification-set builder) rewrite its manifest: the old
    signature is removed with it, so the bundle reads "unsigned (locally built)" rather than "tampered"."""
    bundle = shutil.copytree(tiny_bundle, tmp_path / "b")
    sign_bundle(bundle, keys["trusted"])
    loaded = load_bundle(bundle)[0]
    assert loaded.signature.trusted
    write_manifest(loaded)
    assert not (bundle / SIGNATURE).exists() and load_bundle(bundle)[0].signature.describe() == "unsigned (locally built)"
