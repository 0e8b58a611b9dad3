"""`auto`: the probe ranks real backends fastest first, records the load it ran under, is re-taken when the
model or a library version changes or when a noisy probe can be replaced by a quiet one; a valid profile
means only the chosen backend is imported; the torch reference is not offered to sort.

The bundle here holds two real ONNX artifacts of one contract (same input, same classes): the tiny CNN
and a much heavier CNN (~100x the work), so which is faster is not in doubt, even on a loaded machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import labelled
from dermsort.runtime import engine, probe
from dermsort.runtime.bundle import load_bundle, make_artifact, write_manifest

torch = pytest.importorskip("torch", reason='building the test models needs torch: pip install "dermsort[train]"')


def _heavy_model():
    from torch import nn

    torch.manual_seed(1)
    layers = [nn.Conv2d(3, 64, 3, stride=2, padding=1), nn.ReLU()]
    for _ in range(6):
        layers += [nn.Conv2d(64, 64, 3, padding=1), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 2), nn.Softmax(dim=1)]
    return nn.Sequential(*layers).eval()


@pytest.fixture(scope="module")
def two_speed_bundle(tmp_path_factory) -> Path:
    from model_factory import make_tiny_bundle

    root = make_tiny_bundle(tmp_path_factory.mktemp("two-speed"), openvino=False, model_id="probe-test")
    torch.onnx.export(_heavy_model(), torch.zeros(1, 3, 64, 64), str(root / "model.heavy.onnx"), input_names=["input"],
                      output_names=["probabilities"], opset_version=17, dynamo=False,
                      dynamic_axes={"input": {0: "batch"}, "probabilities": {0: "batch"}})
    bundle, _ = load_bundle(root)
    bundle.artifacts.append(make_artifact(root, "model.heavy.onnx", name="onnx-heavy", backend="onnxruntime",
                                          precision="fp32", threshold=bundle.metadata.threshold))
    write_manifest(bundle)
    return root


def _entry(bundle):
    return engine.load_profile()["models"][bundle.model_id]


def _pairs(entry):
    return [(r["backend"], r["artifact"]) for r in entry["ranking"]]


FAST, SLOW = ("onnxruntime", "onnx-fp32"), ("onnxruntime", "onnx-heavy")


def test_probe_ranks_the_faster_artifact_first_and_records_how(two_speed_bundle):
    bundle, _ = load_bundle(two_speed_bundle)
    chosen = engine.open_backend(bundle, "auto")
    chosen.close()
    entry = _entry(bundle)
    assert entry["source"] == "probe"
    assert _pairs(entry) == [FAST, SLOW]
    assert (chosen.spec.name, chosen.artifact.name) == FAST
    fast, slow = entry["ranking"]
    assert fast["screen_ms"] < slow["screen_ms"] and not slow["measured"]
    # the heavy one (~100x slower) cannot win: screened out after one timed call; load and validity recorded
    how = entry["probe"]
    assert how["screened_out"] == 1 and how["rounds"] == 0 and how["batch"] == probe.PROBE_BATCH
    assert len(entry["load"]["loadavg"]) == 3 and entry["load"]["cpus"] >= 1 and isinstance(entry["load"]["noisy"], bool)
    assert entry["valid_for"]["model"] == probe.model_fingerprint(bundle)
    assert entry["valid_for"]["versions"]["onnxruntime"] == probe.library_version("onnxruntime")


def test_probe_rounds_interleave_and_are_bounded(tiny_bundle, monkeypatch):
    from dermsort.runtime.backends.base import create_backend

    monkeypatch.setattr(probe, "SCREEN_RATIO", 1e9)  # the tiny model's two backends differ by fixed overheads

    pytest.importorskip("openvino", reason='needs OpenVINO installed: pip install "dermsort[openvino]"')
    bundle, _ = load_bundle(tiny_bundle)
    backends = [create_backend(b, bundle, bundle.get(a)).load()
                for b, a in (("onnxruntime", "onnx-fp32"), ("openvino", "openvino-fp16"))]
    try:
        size = bundle.metadata.preprocess.input_size
        rows, how = probe.probe(backends, size, budget_s=0.0)  # two real candidates, both measured
        assert how["screened_out"] == 0 and how["rounds"] == probe.PROBE_MIN_ROUNDS
        assert sorted(r["index"] for r in rows) == [0, 1] and all(r["measured"] and r["median_call_ms"] > 0 for r in rows)
        assert rows[0]["median_call_ms"] <= rows[1]["median_call_ms"]  # fastest first
        _, how = probe.probe(backends, size, budget_s=0.05)
        assert how["rounds"] >= probe.PROBE_MIN_ROUNDS
        # a busy machine: the cap ends the rounds (at least one) whatever the budget
        _, how = probe.probe(backends, size, budget_s=60.0, cap_s=0.0)
        assert how["rounds"] == 1 and how["seconds"] < 30
    finally:
        for b in backends:
            b.close()


def _store(bundle, ranking_pairs, source, noisy=False, change=None):
    ranking = [{"backend": b, "artifact": a, "images_per_s": 1.0} for b, a in ranking_pairs]
    load = {"loadavg": [9.0, 9.0, 9.0] if noisy else [0.0, 0.0, 0.0], "cpus": 2, "per_cpu": 4.5 if noisy else 0.0,
            "noisy": noisy}
    engine.save_profile(bundle, ranking, source=source, load=load)
    if change:
        path = engine.profile_path()
        data = json.loads(path.read_text())
        data["models"][bundle.model_id]["valid_for"].update(change)
        path.write_text(json.dumps(data))


def _auto(bundle):
    backend = engine.open_backend(bundle, "auto")
    backend.close()
    return backend.spec.name, backend.artifact.name


def test_a_valid_profile_is_used_as_is(two_speed_bundle):
    bundle, _ = load_bundle(two_speed_bundle)
    _store(bundle, [SLOW, FAST], "bench")  # a bench that (say) found the heavy one faster: believed while valid
    assert _auto(bundle) == SLOW
    assert _entry(bundle)["source"] == "bench"


@pytest.mark.parametrize("change", [{"versions": {"onnxruntime": "1.0.0"}},  # a backend upgraded
                                    {"versions": {"onnxruntime": None}},  # a backend installed since
                                    {"model": "0123456789abcdef"},  # an artifact re-exported
                                    {"bundle": "another-model-id"},  # another bundle
                                    {"environment": "py311-0123456789"},  # another venv's entry, copied here
                                    None])
def test_library_or_model_change_makes_the_profile_stale(two_speed_bundle, change):
    bundle, _ = load_bundle(two_speed_bundle)
    if change is None:  # an entry from an older dermsort: nothing says what it is valid for
        engine.save_profile(bundle, [{"backend": b, "artifact": a, "images_per_s": 1.0} for b, a in (SLOW, FAST)],
                            source="bench")
        path = engine.profile_path()
        data = json.loads(path.read_text())
        del data["models"][bundle.model_id]["valid_for"]
        path.write_text(json.dumps(data))
    else:
        _store(bundle, [SLOW, FAST], "bench", change=change)
    assert probe.stale_reason(_entry(bundle), bundle)
    assert _auto(bundle) == FAST  # re-probed
    entry = _entry(bundle)
    assert entry["source"] == "probe" and _pairs(entry) == [FAST, SLOW] and not probe.stale_reason(entry, bundle)


def test_a_re_export_changes_the_fingerprint(two_speed_bundle, tmp_path):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(two_speed_bundle, copy)
    bundle, _ = load_bundle(copy)
    before = probe.model_fingerprint(bundle)
    bundle.artifacts[0].threshold += 0.01  # a re-export recalibrated a threshold
    write_manifest(bundle)
    assert probe.model_fingerprint(load_bundle(copy)[0]) != before


def test_a_noisy_probe_is_replaced_only_by_a_quiet_one(two_speed_bundle, monkeypatch):
    bundle, _ = load_bundle(two_speed_bundle)
    # the machine is busy now (whatever its real load): the noisy probe stays, no re-probe each run
    monkeypatch.setattr(probe, "NOISY_LOAD_PER_CPU", -1.0)
    _store(bundle, [SLOW, FAST], "probe", noisy=True)
    assert _auto(bundle) == SLOW and _entry(bundle)["load"]["noisy"]
    # quiet now: a new probe replaces it
    monkeypatch.setattr(probe, "NOISY_LOAD_PER_CPU", 1e9)
    assert _auto(bundle) == FAST
    entry = _entry(bundle)
    assert entry["source"] == "probe" and not entry["load"]["noisy"] and _pairs(entry) == [FAST, SLOW]
    # a quiet probe is kept, even when it is (artificially) wrong: no re-probe on every run
    _store(bundle, [SLOW, FAST], "probe", noisy=False)
    assert _auto(bundle) == SLOW


def _modules_after_sort(tmp_path: Path, bundle_root: Path, backend: str) -> tuple[dict, list[str]]:
    inp = tmp_path / "in"
    inp.mkdir(exist_ok=True)
    row = labelled("ph2", "test", 1)[0]
    (inp / Path(row["path"]).name).write_bytes(Path(row["path"]).read_bytes())
    code = ("import json, sys, io, contextlib\n"
            "from dermsort.cli import main\n"
            "buf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf):\n"
            f"    rc = main(['sort', {str(inp)!r}, '--out', {str(tmp_path / 'out')!r}, '--model', {str(bundle_root)!r},"
            f" '--backend', {backend!r}, '--json'])\n"
            "mods = sorted({m.split('.')[0] for m in sys.modules} & {'openvino', 'onnxruntime', 'torch', 'nncf'})\n"
            "print(json.dumps({'rc': rc, 'summary': json.loads(buf.getvalue()), 'modules': mods}))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["rc"] == 0
    return out["summary"], out["modules"]


def test_auto_with_a_profile_imports_only_the_backend_it_runs(tiny_bundle, tmp_path, monkeypatch):
    pytest.importorskip("openvino", reason='needs OpenVINO installed: pip install "dermsort[openvino]"')
    monkeypatch.setenv("DERMSORT_CACHE_DIR", str(tmp_path / "cache"))
    bundle, _ = load_bundle(tiny_bundle)
    for first, absent in ((("onnxruntime", "onnx-fp32"), "openvino"), (("openvino", "openvino-fp16"), "onnxruntime")):
        others = [p for p in (("onnxruntime", "onnx-fp32"), ("openvino", "openvino-fp16")) if p != first]
        _store(bundle, [first, *others], "bench")
        summary, modules = _modules_after_sort(tmp_path, tiny_bundle, "auto")
        assert (summary["backend"]["backend"], summary["backend"]["artifact"]) == first
        assert absent not in modules and "torch" not in modules, modules


def test_torch_reference_is_not_offered_to_sort(tiny_bundle, tmp_path):
    from click.testing import CliRunner

    from dermsort.cli import cli, main

    help_text = CliRunner().invoke(cli, ["sort", "--help"]).output
    assert "auto|onnxruntime|openvino|tensorrt" in help_text and "torch" not in help_text
    inp = tmp_path / "in"
    inp.mkdir()
    res = subprocess.run([sys.executable, "-m", "dermsort.cli", "sort", str(inp), "--model", str(tiny_bundle),
                          "--backend", "torch"], capture_output=True, text=True, timeout=60)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert "reference for `dermsort bench`" in lines[0] and "dermsort export" in lines[0]
    assert main(["info", "--model", str(tiny_bundle)]) == 0
    # a bundle around a checkpoint (torch-fp32 only), named by its checkpoint file: refused the same way
    from dermsort.train.torch_backend import bundle_from_checkpoint
    from test_offline import _tiny_checkpoint

    root = bundle_from_checkpoint(_tiny_checkpoint(tmp_path / "ckpt.pt"), tmp_path / "torch-bundle")
    res = subprocess.run([sys.executable, "-m", "dermsort.cli", "sort", str(inp), "--model", str(root / "checkpoint.pt")],
                         capture_output=True, text=True, timeout=60)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "reference for `dermsort bench`" in lines[0], res.stderr


def test_a_profile_measured_before_a_faster_backend_was_installed_is_stale():
    """Issue 26: a profile written where only ONNX Runtime was installed (another venv on this machine, or
    before `pip install openvino`) must not keep `auto` on ONNX Runtime once OpenVINO is here."""
    from dermsort.runtime.backends.base import backend_installed
    from dermsort.runtime.bundle import DEFAULT_BUNDLE

    bundle, _ = load_bundle(DEFAULT_BUNDLE)
    if not backend_installed("openvino")[0] or not any(a.backend == "openvino" for a in bundle.artifacts):
        pytest.skip("needs OpenVINO installed and an OpenVINO artifact in the bundled model")
    ranking = [{"backend": "onnxruntime", "artifact": "onnx-fp32", "images_per_s": 100.0}]
    now = {"ranking": ranking, "valid_for": probe.validity(bundle, ranking)}
    assert now["valid_for"]["versions"]["openvino"] and not probe.stale_reason(now, bundle)
    before = json.loads(json.dumps(now))
    before["valid_for"]["versions"]["openvino"] = None  # what that environment recorded: not installed
    assert "openvino not installed ->" in probe.stale_reason(before, bundle)
    older = json.loads(json.dumps(now))
    del older["valid_for"]["versions"]["openvino"]  # a profile from before all candidates were recorded
    assert probe.stale_reason(older, bundle)


def test_each_python_environment_keeps_its_own_profile(two_speed_bundle, monkeypatch):
    """Issue 26: two virtual environments on one machine (one with only ONNX Runtime) must not overwrite each
    other's ranking: the profile file is named by host and environment (sys.prefix + Python version)."""
    bundle, _ = load_bundle(two_speed_bundle)
    _store(bundle, [SLOW, FAST], "bench")
    here = engine.profile_path()
    monkeypatch.setattr(probe.sys, "prefix", "/opt/another-venv")
    other = engine.profile_path()
    assert other != here and other.parent == here.parent
    assert engine.load_profile() == {}  # nothing measured in this environment yet
    assert _auto(bundle) == FAST  # probed here, written to this environment's file
    assert _pairs(json.loads(other.read_text())["models"][bundle.model_id]) == [FAST, SLOW]
    assert _pairs(json.loads(here.read_text())["models"][bundle.model_id]) == [SLOW, FAST]  # untouched


def test_a_bench_on_a_busy_machine_does_not_replace_a_quiet_profile(two_speed_bundle, monkeypatch):
    bundle, _ = load_bundle(two_speed_bundle)
    _store(bundle, [SLOW, FAST], "bench", noisy=False)  # quiet (artificially ranked, to see who wins)
    _store(bundle, [FAST, SLOW], "bench", noisy=True)  # busy: recorded beside it, not used
    entry = _entry(bundle)
    assert _pairs(entry) == [SLOW, FAST] and not entry["load"]["noisy"]
    assert _pairs(entry["noisy_bench"]) == [FAST, SLOW] and entry["noisy_bench"]["load"]["noisy"]
    monkeypatch.setattr(probe, "NOISY_LOAD_PER_CPU", 1e9)  # whatever the real load: quiet now
    assert _auto(bundle) == SLOW  # the quiet bench is believed, no re-probe
    # a quiet bench replaces it; a busy one replaces only a busy one
    _store(bundle, [FAST, SLOW], "bench", noisy=False)
    assert _pairs(_entry(bundle)) == [FAST, SLOW] and "noisy_bench" not in _entry(bundle)
    engine.profile_path().unlink()
    _store(bundle, [FAST, SLOW], "bench", noisy=True)  # nothing quiet known: a busy bench is better than nothing
    _store(bundle, [SLOW, FAST], "bench", noisy=True)
    assert _pairs(_entry(bundle)) == [SLOW, FAST] and _entry(bundle)["load"]["noisy"]
    # a busy bench that did get written is re-measured by a probe once the machine is quiet
    assert _auto(bundle) == FAST
    assert _entry(bundle)["source"] == "probe" and not _entry(bundle)["load"]["noisy"]


def test_load_watch_counts_only_other_processes(monkeypatch):
    watch = probe.LoadWatch().start()
    t0 = __import__("time").process_time()
    while __import__("time").process_time() - t0 < 0.2:  # this process's own work is not load
        pass
    load = watch.finish()
    assert len(load["loadavg"]) == 3 and len(load["end_loadavg"]) == 3
    assert 0.0 <= load["others_per_cpu"] <= 1.5  # a fraction of the CPUs (ticks are coarse)
    # quiet at the start (load average), but other processes kept the CPUs busy meanwhile: noisy
    monkeypatch.setattr(probe, "machine_load", lambda: {"loadavg": [0.0] * 3, "cpus": 2, "per_cpu": 0.0, "noisy": False})
    monkeypatch.setattr(probe, "NOISY_LOAD_PER_CPU", -1.0)
    assert probe.LoadWatch().start().finish()["noisy"]


def test_a_probe_on_a_busy_machine_ranks_by_cpu_time(two_speed_bundle, monkeypatch):
    """Issue 26: on a busy machine a probe's wall times measure the other programs; the CPU time of each call
    does not count the time it was descheduled, so the ranking holds (and says which clock it used)."""
    bundle, _ = load_bundle(two_speed_bundle)
    monkeypatch.setattr(probe, "NOISY_LOAD_PER_CPU", -1.0)  # busy now, whatever the real load
    monkeypatch.setattr(probe, "SCREEN_RATIO", 1e9)  # both measured in rounds
    assert _auto(bundle) == FAST
    entry = _entry(bundle)
    assert entry["probe"]["clock"] == "cpu" and entry["load"]["noisy"] and _pairs(entry) == [FAST, SLOW]
    assert all(r["measured"] for r in entry["ranking"])
    monkeypatch.setattr(probe, "NOISY_LOAD_PER_CPU", 1e9)  # quiet: wall time, and the busy probe is replaced
    assert _auto(bundle) == FAST and _entry(bundle)["probe"]["clock"] == "wall"

    import time

    class Fake:  # "descheduled" waits 30 ms per call but costs no CPU; "busy" computes for 6 ms
        def __init__(self, sleep_s, spin_s):
            self.sleep_s, self.spin_s = sleep_s, spin_s

        def predict(self, batch):
            time.sleep(self.sleep_s)
            t0 = time.process_time()
            while time.process_time() - t0 < self.spin_s:
                pass

    descheduled, busy = Fake(0.03, 0.0), Fake(0.0, 0.006)
    rows, how = probe.probe([busy, descheduled], 8, budget_s=0.0, by_cpu=True)
    assert how["clock"] == "cpu" and rows[0]["index"] == 1  # the cheap one, however long it was kept waiting
    rows, how = probe.probe([busy, descheduled], 8, budget_s=0.0, by_cpu=False)
    assert how["clock"] == "wall" and rows[0]["index"] == 0


def test_a_few_images_are_not_worth_a_probe(tiny_bundle, tmp_path, monkeypatch):
    """Issue 26: the first `sort` of one image on a new machine must not load (and compile) every candidate
    backend to rank them: below PROBE_MIN_IMAGES it runs the reference order and writes no profile; a bigger
    folder probes."""
    pytest.importorskip("openvino", reason='needs OpenVINO installed: pip install "dermsort[openvino]"')
    from dermsort.runtime import cli
    from dermsort.cli import main

    monkeypatch.setattr(cli, "PROBE_MIN_IMAGES", 3)
    inp = tmp_path / "in"
    inp.mkdir()
    rows = labelled("ph2", "test", 3)
    for row in rows[:2]:
        (inp / Path(row["path"]).name).write_bytes(Path(row["path"]).read_bytes())
    calls = []
    monkeypatch.setattr(engine, "measure", lambda *a, **k: calls.append(1) or probe.probe(*a, **k))
    assert main(["sort", str(inp), "--out", str(tmp_path / "o1"), "--model", str(tiny_bundle), "--json"]) == 0
    assert calls == [] and not engine.profile_path().exists()
    (inp / Path(rows[2]["path"]).name).write_bytes(Path(rows[2]["path"]).read_bytes())
    assert main(["sort", str(inp), "--out", str(tmp_path / "o2"), "--model", str(tiny_bundle), "--json"]) == 0
    assert calls == [1] and engine.profile_path().exists()
