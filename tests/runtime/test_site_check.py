"""The site check (issue 22): ``dermsort validate``, site profiles in sort/watch/info, and the drift check.

Real bundle (runtime/models/default), real ONNX Runtime / OpenVINO, real images from ../shared/data. Model v3's
threshold is bound on the ISIC 2020 validation split, so ISIC 2020 as it is holds the claim (that outcome is
tested too). The site where the claim fails is the same ISIC 2020 patients behind another image pipeline: each
split re-encoded at JPEG quality 8 (scripts/recompress-site.py; chosen on the validation split). Its validation
split must reveal the shortfall, and the site threshold written from it must hold on its test split.
Each labelled split is scored once per module (module-scoped fixtures); each command runs as the real
console entry point in a subprocess, so exit codes and one-line errors are what a user sees.
"""

from __future__ import annotations

import csv
import html
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DATA, labelled
from dermsort.runtime import drift, site
from dermsort.runtime.results_csv import RESULT_FIELDS
from dermsort.runtime.metrics import binomial_band, cases_needed, wilson_ci

TARGET = 0.95
#: the module's sites are measured on ONNX Runtime's FP32 artifact, so that figures do not depend on which
#: artifact this machine's probe ranks first (a profile then makes `sort --backend auto` run that artifact)
ORT = ("--backend", "onnxruntime", "--precision", "fp32")


def _env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"DERMSORT_CACHE_DIR": str(root / "cache"), "XDG_CONFIG_HOME": str(root / "config"),
                "XDG_STATE_HOME": str(root / "state")})
    return env


def dermsort(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dermsort.cli", *map(str, args)], capture_output=True, text=True,
                          env=_env(root), timeout=600)


def _one_line_error(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.startswith("dermsort: error:")]
    assert len(lines) == 1, res.stderr
    return lines[0]


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _copy_split(dataset: str, split: str, folder: Path) -> dict[str, dict[str, str]]:
    folder.mkdir(parents=True)
    rows = {}
    for row in labelled(dataset, split):
        name = os.path.basename(row["path"])
        shutil.copyfile(row["path"], folder / name)
        rows[name] = row
    return rows


def _reseal(profile: dict, **changes) -> dict:
    """A profile changed AND given a fresh digest: what a profile for another model/artifact looks like."""
    data = json.loads(json.dumps(profile))
    for key, value in changes.items():
        data[key] = value
    data["integrity"]["sha256"] = site._digest(data)
    return data


#: the site where model v3 falls short: ISIC 2020 re-encoded at this JPEG quality (docs/SITE_CHECK.md)
JPEG_QUALITY = 8
RECOMPRESS = Path(__file__).resolve().parents[2] / "scripts" / "recompress-site.py"


def _recompressed(split: str, folder: Path) -> Path:
    res = subprocess.run([sys.executable, str(RECOMPRESS), str(DATA / "isic2020"), split, str(JPEG_QUALITY),
                          str(folder)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    return folder


# --------------------------------------------------------------------------- one validate per site

@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("site")


def _validate(root: Path, data: Path, name: str, *split: str) -> dict:
    out, profile = root / name, root / f"{name}-profile.json"
    res = dermsort(root, "validate", "--data", data, *split, "--out", out, "--write-site-profile", profile, *ORT)
    assert res.returncode == 0, res.stderr
    return {"res": res, "out": out, "profile": profile, "report": json.loads((out / "validation.json").read_text())}


def _sort(root: Path, inp: Path, name: str, profile: Path) -> dict:
    out = root / name
    res = dermsort(root, "sort", inp, "--out", out, "--site-profile", profile, "--json")
    assert res.returncode == 0, res.stderr
    with open(out / "results.csv", newline="") as fh:
        results = list(csv.DictReader(fh))
    return {"res": res, "summary": json.loads(res.stdout), "results": results, "out": out}


@pytest.fixture(scope="module")
def site_val(root):
    """The site where v3 falls short: ISIC 2020 val re-encoded at JPEG quality 8; validate + site profile."""
    return _validate(root, _recompressed("val", root / "jpeg-val-images"), "jpeg-val")


@pytest.fixture(scope="module")
def site_test_sorted(root, site_val):
    """That site's later work: ISIC 2020 test re-encoded the same way, sorted with its site profile."""
    inp = _recompressed("test", root / "jpeg-test-images")
    with open(inp / "labels.csv", newline="") as fh:
        rows = {r["file"]: r for r in csv.DictReader(fh)}
    (inp / "labels.csv").unlink()  # a clinic's unsorted folder: images only
    return {**_sort(root, inp, "jpeg-test-sorted", site_val["profile"]), "rows": rows}


@pytest.fixture(scope="module")
def isic_val(root):
    """The ISIC 2020 validation split as it is: the site v3's threshold was bound on (the claim holds)."""
    return _validate(root, DATA / "isic2020", "isic-val", "--split", "val")


@pytest.fixture(scope="module")
def isic_test_sorted(root, isic_val):
    """The ISIC 2020 test split sorted with the ISIC 2020 site profile (a real sort, --json)."""
    inp = root / "isic-test"
    rows = _copy_split("isic2020", "test", inp)
    return {**_sort(root, inp, "isic-test-sorted", isic_val["profile"]), "rows": rows}


@pytest.fixture(scope="module")
def ham_val(root):
    """The HAM10000 validation split as the site (the data the threshold was calibrated on, among others)."""
    return _validate(root, DATA / "ham10000", "ham-val", "--split", "val")


def _bundle_manifest() -> dict:
    return json.loads((Path(site.__file__).parent / "models" / "default" / "manifest.json").read_text())


# --------------------------------------------------------------------------- validate

def test_the_shifted_site_reveals_the_shortfall(site_val):
    report, res = site_val["report"], site_val["res"]
    at = report["at_validated_threshold"]
    n_mel = sum(int(r["malignant"]) for r in labelled("isic2020", "val"))
    assert report["data"]["n_malignant"] == n_mel and report["data"]["n_scored"] == len(labelled("isic2020", "val"))
    assert report["claim"]["holds"] is False and report["claim"]["confirmed"] is False
    assert at["sensitivity_ci"][1] < TARGET  # the interval does not reach the target: a real shortfall
    assert at["per_diagnosis"]["melanoma"]["n"] == n_mel
    assert at["per_diagnosis"]["melanoma"]["sensitivity"] == pytest.approx(at["sensitivity"])
    assert "SHORTFALL" in res.stdout and "sensitivity per diagnosis: melanoma" in res.stdout
    # the artifact it ran, at that artifact's own validated threshold
    assert report["validated_threshold"] == pytest.approx(
        next(a["threshold"] for a in _bundle_manifest()["artifacts"] if a["name"] == report["artifact"]["name"]))
    # the figures are the package's one Wilson interval, on the cases' own decisions
    tp = at["confusion"]["tp"]
    assert tp == sum(c["malignant"] and c["decision"] == "review" for c in report["cases"])
    assert at["sensitivity_ci"] == pytest.approx(wilson_ci(tp, n_mel))
    page = (site_val["out"] / "validation.html").read_text()
    assert 'id="claim" role="alert"' in page and "SHORTFALL" in page and "http" not in page.split("</head>")[1]


def test_the_shifted_site_threshold_is_lower_and_rests_on_its_cases(site_val):
    report = site_val["report"]
    st = report["site_threshold"]
    assert st["confident"] and st["threshold"] < report["validated_threshold"] and st["direction"] == "lower"
    assert st["sensitivity"] >= TARGET
    # the largest such threshold: any higher p of a malignant case would lose one below the target
    mal = sorted((c["p_malignant"] for c in report["cases"] if c["malignant"]), reverse=True)
    needed = math.ceil(TARGET * len(mal))
    assert mal[needed - 1] >= st["threshold"] > max([c["p_malignant"] for c in report["cases"]
                                                     if c["p_malignant"] < mal[needed - 1]], default=0)
    assert st["sensitivity_ci"] == pytest.approx(wilson_ci(round(st["sensitivity"] * len(mal)), len(mal)))
    profile = json.loads(site_val["profile"].read_text())
    assert profile["threshold"] == st["threshold"] and profile["model_id"] == report["model_id"]
    assert profile["artifact"]["name"] == report["artifact"]["name"]
    assert profile["cases"]["n"] == report["data"]["n_scored"] and profile["cases"]["n_malignant"] == len(mal)
    assert profile["cases"]["sensitivity_ci"] == st["sensitivity_ci"] and profile["created"]
    assert len(profile["reference"]["p_quantiles"]) == len(site.P_LEVELS)
    assert profile["integrity"]["sha256"] == site._digest(profile)


def test_the_shifted_site_profile_reaches_the_target_on_its_test_split(site_test_sorted, site_val):
    results, rows = site_test_sorted["results"], site_test_sorted["rows"]
    profile = site.read_profile(site_val["profile"])
    by_name = {os.path.basename(r["dest"]): r for r in results}
    assert len(by_name) == len(rows) == len(labelled("isic2020", "test"))
    mel = [by_name[n] for n, r in rows.items() if r["dx"] == "mel"]
    assert len(mel) == sum(int(r["malignant"]) for r in labelled("isic2020", "test"))
    caught = sum(r["decision"] == "review" for r in mel)
    assert caught / len(mel) >= TARGET, f"{caught}/{len(mel)} melanomas sent to review at the site threshold"
    # every row says which profile applied and at which threshold, and it is not an override
    assert {r["site_profile"] for r in results} == {profile.label}
    assert {float(r["threshold"]) for r in results} == {profile.threshold}
    assert {r["threshold_overridden"] for r in results} == {"False"}
    cols = list(results[0])  # appended after the columns before it, the old order intact
    assert cols[:cols.index("site_profile")] == RESULT_FIELDS[:RESULT_FIELDS.index("site_profile")]
    # without the profile the same images would miss melanomas: the shortfall carries over to unseen patients
    caught_without = sum(not r["p_malignant"] or float(r["p_malignant"]) >= profile.data["validated_threshold"]
                         for r in mel)
    assert wilson_ci(caught_without, len(mel))[1] < TARGET


def test_isic2020_as_it_is_keeps_the_claim(isic_val, isic_test_sorted):
    """The site v3's threshold was bound on: "the claim holds here" is a site-check outcome too."""
    report, res = isic_val["report"], isic_val["res"]
    at, st = report["at_validated_threshold"], report["site_threshold"]
    assert report["claim"]["holds"] and at["sensitivity"] >= TARGET and "SHORTFALL" not in res.stdout
    assert "consistent with the validated claim" in res.stdout or "the validated claim holds here" in res.stdout
    # the site needs no change: its threshold is the validated one, not a lower one by a rounding
    assert st["confident"] and st["direction"] == "same" and st["threshold"] == report["validated_threshold"]
    assert "this site needs threshold" in res.stdout and ": the validated threshold;" in res.stdout
    # and on unseen patients of that population the profile keeps the target
    rows, results = isic_test_sorted["rows"], isic_test_sorted["results"]
    by_name = {os.path.basename(r["dest"]): r for r in results}
    mel = [by_name[n] for n, r in rows.items() if r["dx"] == "mel"]
    assert sum(r["decision"] == "review" for r in mel) / len(mel) >= TARGET


def test_sort_summary_and_page_show_the_profile(isic_test_sorted, isic_val, site_test_sorted, site_val):
    for sorted_, val in ((isic_test_sorted, isic_val), (site_test_sorted, site_val)):
        summary = sorted_["summary"]
        profile = site.read_profile(val["profile"])
        assert summary["site_profile"]["label"] == profile.label
        assert summary["threshold"] == profile.threshold and summary["threshold_overridden"] is False
        page = (sorted_["out"] / "report.html").read_text()
        assert profile.label in page and "Site profile" in page
        assert 'id="override"' not in page  # a site threshold is not an override
        assert summary["drift"]["checked"]
        # a DRIFT line on the page exactly when the run departs clearly
        assert ('id="drift"' in page) == bool(summary["drift"]["alarm"])
    # ISIC 2020 test looks like ISIC 2020 validation: no drift alarm
    assert not isic_test_sorted["summary"]["drift"]["alarm"], isic_test_sorted["summary"]["drift"]


def test_ham10000_val_leaves_the_threshold_where_validation_put_it(ham_val, site_val):
    report = ham_val["report"]
    validated, st = report["validated_threshold"], report["site_threshold"]
    assert report["claim"]["holds"] and report["claim"]["confirmed"]  # lower bound >= target here
    assert "the validated claim holds here" in ham_val["res"].stdout
    assert st["confident"] and st["sensitivity"] >= TARGET
    # this site needs no lower threshold (v3's threshold is bound on ISIC 2020; HAM10000 would allow a higher one)
    assert st["threshold"] >= validated and st["direction"] == "higher"
    # ... and that is where the model's own validation put HAM10000 (the threshold basis in the bundle metadata)
    basis = _bundle_manifest()["metadata"]["validation"]["threshold_basis"]["sets"]["ham10000"]
    assert report["data"]["n_malignant"] == basis["n_malignant"]
    assert st["threshold"] == pytest.approx(basis["threshold"], rel=0.05)
    # while the shifted site moves the other way, by more than x2 on the odds
    shift = _logit(validated) - _logit(site_val["report"]["site_threshold"]["threshold"])
    assert shift > math.log(2)


def test_a_raising_profile_needs_the_explicit_override(root, ham_val, sample_images, tmp_path):
    profile = site.read_profile(ham_val["profile"])
    assert profile.threshold > profile.data["validated_threshold"]  # this site could sort more to benign
    line = _one_line_error(dermsort(root, "sort", sample_images, "--out", tmp_path / "o", "--site-profile",
                                    ham_val["profile"]))
    assert "raises the threshold" in line and "--threshold" in line
    assert not (tmp_path / "o").exists()
    # the same override a raised --threshold takes today: it runs, warns, and marks every row
    res = dermsort(root, "sort", sample_images, "--out", tmp_path / "o", "--site-profile", ham_val["profile"],
                   "--threshold", f"{profile.threshold:.6g}")
    assert res.returncode == 0, res.stderr
    assert "ABOVE the validated threshold" in res.stderr
    with open(tmp_path / "o" / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and {r["threshold_overridden"] for r in rows} == {"True"}
    assert {r["site_profile"] for r in rows} == {profile.label}


# --------------------------------------------------------------------------- messages and refusals

def test_too_few_malignant_cases_says_how_many_more(root, tmp_path):
    n_needed = cases_needed(0.90)
    assert wilson_ci(n_needed, n_needed)[0] >= 0.90 > wilson_ci(n_needed - 1, n_needed - 1)[0]
    n_mal = sum(int(r["malignant"]) for r in labelled("ph2", "val"))
    assert 0 < n_mal < n_needed
    res = dermsort(root, "validate", "--data", DATA / "ph2", "--split", "val", "--out", tmp_path / "v",
                   "--write-site-profile", tmp_path / "p.json")
    line = _one_line_error(res)
    expected = (f"a lower 95 % bound of 90 % needs >= {n_needed} malignant cases at 100 % sensitivity "
                f"({n_needed - n_mal} more)")
    assert expected in res.stdout and expected in line and "no site profile written" in line
    assert not (tmp_path / "p.json").exists()
    report = json.loads((tmp_path / "v" / "validation.json").read_text())
    assert report["site_threshold"]["threshold"] is None and not report["site_threshold"]["confident"]
    assert html.escape(expected) in (tmp_path / "v" / "validation.html").read_text()


def test_a_profile_for_another_model_is_refused(root, site_val, sample_images, tmp_path):
    other = tmp_path / "other-model.json"
    other.write_text(json.dumps(_reseal(json.loads(site_val["profile"].read_text()), model_id="another-model")))
    line = _one_line_error(dermsort(root, "sort", sample_images, "--out", tmp_path / "o", "--site-profile", other))
    assert "measured on model another-model" in line
    line = _one_line_error(dermsort(root, "info", "--site-profile", other))
    assert "another-model" in line


def test_a_profile_for_another_artifact_is_refused(root, site_val, sample_images, tmp_path):
    art = site.read_profile(site_val["profile"]).artifact
    pick = ["--backend", "onnxruntime", "--precision", "fp32"] if art != "onnx-fp32" else \
        ["--backend", "onnxruntime", "--precision", "fp16"]
    line = _one_line_error(dermsort(root, "sort", sample_images, "--out", tmp_path / "o", "--site-profile",
                                    site_val["profile"], *pick))
    assert f"measured on artifact {art}" in line
    # same name, other bytes (a re-exported model under the same id) is another artifact too
    data = json.loads(site_val["profile"].read_text())
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(_reseal(data, artifact={**data["artifact"], "sha256": "0" * 64})))
    line = _one_line_error(dermsort(root, "sort", sample_images, "--out", tmp_path / "o", "--site-profile", forged))
    assert f"measured on artifact {art}" in line


def test_an_edited_profile_is_refused(root, site_val, sample_images, tmp_path):
    data = json.loads(site_val["profile"].read_text())
    data["threshold"] = data["validated_threshold"]  # a hand edit back to "no change": still an edit
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(data, indent=1))
    line = _one_line_error(dermsort(root, "sort", sample_images, "--out", tmp_path / "o", "--site-profile", edited))
    assert "was modified after `dermsort validate` wrote it" in line
    assert not (tmp_path / "o").exists()


def test_the_default_profile_location_is_used_and_can_be_ignored(root, site_val, sample_images, tmp_path):
    assert site.default_profile_path() == Path(os.environ["XDG_CONFIG_HOME"]) / "dermsort" / "site-profile.json"
    default_copy = Path(_env(root)["XDG_CONFIG_HOME"]) / "dermsort" / "site-profile.json"
    default_copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(site_val["profile"], default_copy)
    try:
        res = dermsort(root, "sort", sample_images, "--out", tmp_path / "a", "--json")
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["site_profile"]["path"] == str(default_copy)
        res = dermsort(root, "sort", sample_images, "--out", tmp_path / "b", "--json", "--no-site-profile")
        assert res.returncode == 0 and json.loads(res.stdout)["site_profile"] is None
        info = dermsort(root, "info")
        assert "site         site profile site-profile.json@" in info.stdout
    finally:
        default_copy.unlink()


def test_undecodable_images_are_excluded_counted_and_escaped(root, tmp_path):
    folder = tmp_path / "site"
    folder.mkdir()
    rows = labelled("ham10000-sample", "test", 6)
    lines = ["file,malignant,dx,split"]
    for r in rows:
        shutil.copyfile(r["path"], folder / os.path.basename(r["path"]))
        lines.append(f"{os.path.basename(r['path'])},{r['malignant']},{r['dx']},test")
    evil = "<img src=x onerror=alert(1)>.jpg"
    (folder / evil).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "truncated.jpg").write_bytes(Path(rows[0]["path"]).read_bytes()[:300])
    lines += [f'"{evil}",1,mel,test', "truncated.jpg,0,nv,test"]
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    res = dermsort(root, "validate", "--data", folder, "--out", tmp_path / "v")
    assert res.returncode == 0, res.stderr
    assert "2 excluded (could not be decoded)" in res.stdout and "2 image(s) could not be decoded" in res.stdout
    report = json.loads((tmp_path / "v" / "validation.json").read_text())
    assert report["data"]["n_excluded"] == 2 and report["data"]["n_scored"] == 6
    assert {os.path.basename(x["file"]) for x in report["excluded"]} == {evil, "truncated.jpg"}
    page = (tmp_path / "v" / "validation.html").read_text()
    assert "<img" not in page and "&lt;img src=x onerror=alert(1)&gt;.jpg" in page


# --------------------------------------------------------------------------- drift

def test_a_clear_departure_is_said_in_one_line(root, site_val, tmp_path):
    # HAM10000 images (a third malignant, uncompressed) sorted with the compressed screening site's profile:
    # clearly not that site
    inp = tmp_path / "ham"
    _copy_split("ham10000", "test", inp)
    res = dermsort(root, "sort", inp, "--out", tmp_path / "o", "--site-profile", site_val["profile"])
    assert res.returncode == 0, res.stderr
    drift_lines = [line for line in res.stdout.splitlines() if line.startswith("DRIFT:")]
    assert len(drift_lines) == 1 and "p(malignant) distribution differs" in drift_lines[0]
    page = (tmp_path / "o" / "report.html").read_text()
    assert 'id="drift" role="alert"' in page and "DRIFT: this run departs clearly" in page
    history = [json.loads(x) for x in (tmp_path / "o" / ".dermsort" / "runs.jsonl").read_text().splitlines()]
    assert history[-1]["alarm"] is True and history[-1]["p_ks"] >= drift.MIN_KS
    info = dermsort(root, "info", "--site-profile", site_val["profile"])
    assert info.returncode == 0 and "recent runs" in info.stdout and "DRIFT: p(malignant)" in info.stdout


def test_non_dermoscopy_inputs_say_they_look_unlike_validation(root, tmp_path):
    # clinical photographs and everyday photos (ood test split), sorted without a site profile: the reference
    # is the bundle's own validation; the gate sends them to review and the run says it departs
    inp = tmp_path / "ood"
    inp.mkdir()
    with open(DATA / "ood" / "ood.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "test"]
    for r in rows:
        shutil.copyfile(DATA / "ood" / r["file"], inp / os.path.basename(r["file"]))
    res = dermsort(root, "sort", inp, "--out", tmp_path / "o", "--no-site-profile")
    assert res.returncode == 0, res.stderr
    drift_lines = [line for line in res.stdout.splitlines() if line.startswith("DRIFT:")]
    assert len(drift_lines) == 1 and "not recognised as dermoscopy" in drift_lines[0], res.stdout
    page = (tmp_path / "o" / "report.html").read_text()
    assert 'id="drift" role="alert"' in page and "not recognised as dermoscopy" in page
    run = json.loads((tmp_path / "o" / ".dermsort" / "runs.jsonl").read_text().splitlines()[-1])
    assert run["alarm"] is True and run["ood_rejected"] > len(rows) // 2


def test_small_runs_raise_no_alarm(root, site_val, sample_images, tmp_path):
    res = dermsort(root, "sort", sample_images, "--out", tmp_path / "o", "--site-profile", site_val["profile"],
                   "--json")
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)["drift"]
    assert d["n_images"] == 12 < drift.MIN_IMAGES and not d["checked"] and not d["alarm"]
    assert 'id="drift"' not in (tmp_path / "o" / "report.html").read_text()


def test_watch_shows_the_profile_and_checks_drift(root, site_val, sample_images, tmp_path):
    res = dermsort(root, "watch", sample_images, "--out", tmp_path / "o", "--site-profile", site_val["profile"],
                   "--interval", "0.2", "--settle", "0", "--max-cycles", "3")
    assert res.returncode == 0, res.stderr
    label = site.read_profile(site_val["profile"]).label
    assert f"site profile {label}" in res.stderr and "drift check:" in res.stderr
    with open(tmp_path / "o" / "results.csv", newline="") as fh:
        assert {r["site_profile"] for r in csv.DictReader(fh)} == {label}


def test_benign_share_outside_the_binomial_band_departs():
    ref = {"source": "test", "benign_share": 0.4, "p_levels": [], "p_quantiles": [], "n_p": 0, "ood_rate": 0.0}
    low, high = binomial_band(0.4, 100)
    assert 0 < low < 40 < high < 100
    decisions = [{"decision": "benign" if i < 55 else "review", "p_malignant": 0.01,
                  "reason": "p_malignant 0.0100 < threshold"} for i in range(100)]
    result = drift.assess(decisions, ref)
    assert high < 55 and result["alarm"] and "sent to benign/" in result["departures"][0]
    # just outside the band but a small shift (clustered images): not a clear departure
    high_1000 = binomial_band(0.4, 1000)[1]
    near = [dict(decisions[0], decision="benign" if i < high_1000 + 1 else "review") for i in range(1000)]
    assert (high_1000 + 1) / 1000 - 0.4 < drift.MIN_SHARE_SHIFT and not drift.assess(near, ref)["alarm"]
    decisions = [dict(d, decision="benign" if i < 40 else "review") for i, d in enumerate(decisions)]
    assert not drift.assess(decisions, ref)["alarm"]
    # images the out-of-distribution gate rejects are counted by their reason's prefix
    gated = decisions[:90] + [{"decision": "review", "p_malignant": None,
                               "reason": f"{site.OOD_REASON} (score 0.02)"} for _ in range(10)]
    result = drift.assess(gated, ref)
    assert result["ood_rejected"] == 10 and any("not recognised as dermoscopy" in x for x in result["departures"])
    assert not drift.assess(gated[:20], ref)["alarm"]  # < MIN_IMAGES: never an alarm
