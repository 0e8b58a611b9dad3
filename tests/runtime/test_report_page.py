"""The review page OUT/report.html: built by every sort from results.csv, escaped, offline, rebuilt by
`dermsort report`, and rendered in a real browser (headless Chromium) when one is installed."""

from __future__ import annotations

import csv
import html.parser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import labelled
from dermsort.cli import cli
from dermsort.runtime.report_page import REPORT, RUN_INFO, THUMBS, ReportRefresher, build_report, near_threshold
from dermsort.runtime.thumbs import save_thumbnail

#: a script in a file name; the page must show it as text and never as markup
HOSTILE = "<img src=x onerror=document.body.setAttribute('data-pwned',1)>.jpg"
QUOTES = "\"';--.jpg"


class _Dom(html.parser.HTMLParser):
    """Every element with its attributes, and the text of the page."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data):
        self.text.append(data)

    def find(self, tag: str, **attrs: str) -> list[dict[str, str]]:
        return [a for t, a in self.elements if t == tag and all(a.get(k) == v for k, v in attrs.items())]


def _parse(text: str) -> _Dom:
    dom = _Dom()
    dom.feed(text)
    return dom


def _inputs(folder: Path) -> Path:
    """Real images (two under hostile names), a corrupt JPEG, a too-small PNG and a text file."""
    folder.mkdir()
    rows = labelled("ham10000-sample", "test", 6) + labelled("ph2", "test", 3) + labelled("isic2020", "test", 3)
    for row in rows:
        shutil.copy(row["path"], folder / os.path.basename(row["path"]))
    shutil.copy(rows[0]["path"], folder / HOSTILE)
    shutil.copy(rows[7]["path"], folder / QUOTES)
    data = Path(rows[1]["path"]).read_bytes()
    (folder / "broken.jpg").write_bytes(data[: len(data) // 4] + b"\0" * 10)
    Image.open(rows[2]["path"]).convert("RGB").resize((40, 30)).save(folder / "tiny.png")
    (folder / "notes.txt").write_text("not an image\n")
    return folder


def _sort(inp: Path, out: Path, *extra: str):
    res = CliRunner().invoke(cli, ["sort", str(inp), "--out", str(out), "--backend", "onnxruntime", *extra],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res


@pytest.fixture(scope="module")
def sorted_out(tmp_path_factory) -> Path:
    """One real sort with the bundled model at an overridden threshold (the page is built by `sort`)."""
    root = tmp_path_factory.mktemp("report")
    out = root / "out"
    _sort(_inputs(root / "in"), out, "--threshold", "0.2")
    return out


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _check_page(out: Path, text: str) -> _Dom:
    """What the page promises, on the markup as written (or as a browser serialises its DOM)."""
    rows = _rows(out)
    dom = _parse(text)
    cards = [a for t, a in dom.elements if t == "li" and "card" in a.get("class", "").split()]
    assert len(cards) == len(rows)
    # every placed image is linked exactly once, by a relative, percent-encoded path inside OUT
    hrefs = [a["href"] for a in dom.find("a") if a.get("href")]
    assert sorted(hrefs) == sorted(_quote(r["dest"]) for r in rows)
    for href in hrefs:
        assert re.fullmatch(r"(benign|review)/[A-Za-z0-9%._~/-]+", href), href
    # nothing from a name became markup: no event handler attribute and no injected element anywhere
    assert not [(t, a) for t, a in dom.elements for k in a if k.startswith("on")]
    assert len(dom.find("img")) == sum(1 for r in rows if (out / THUMBS / f"{r['sha256']}.jpg").exists())
    assert not dom.find("body", **{"data-pwned": "1"})
    page_text = "".join(dom.text)
    assert HOSTILE.split(".jpg")[0] in page_text and QUOTES in page_text  # shown as text
    # offline: nothing is loaded from anywhere but OUT
    assert not re.search(r"(src|href)=\"(https?:)?//", text)
    return dom


def test_sort_writes_an_escaped_self_contained_page(sorted_out):
    text = (sorted_out / REPORT).read_text()
    dom = _check_page(sorted_out, text)
    rows = _rows(sorted_out)
    # the override banner, and the counts
    assert dom.find("div", id="override", role="alert")
    assert "0.2000" in text and "do NOT apply" in text
    n_benign = sum(r["decision"] == "benign" for r in rows)
    assert f'<li id="n-benign"><b>{n_benign}</b>' in text and f'<li id="n-sorted"><b>{len(rows)}</b>' in text
    # the input problems have their own section: corrupt, too small, not an image
    problems = text.split('id="problems"')[1].split("</section>")[0]
    for name in ("broken.jpg", "tiny.png", "notes.txt"):
        assert f'data-name="{name}"' in problems
    assert 'data-name="broken.jpg"' not in text.split('id="review"')[1]
    # the validated figures of the bundled model, with confidence intervals
    assert "Sensitivity" in text and "95 % CI" in text
    # a Content-Security-Policy that allows the page's own style and script only
    csp = dom.find("meta", **{"http-equiv": "Content-Security-Policy"})[0]["content"]
    assert "default-src 'none'" in csp and "script-src 'sha256-" in csp and "unsafe-inline" not in csp


def test_thumbnails_are_small_jpegs_of_every_decodable_image(sorted_out):
    rows = _rows(sorted_out)
    thumbs = sorted((sorted_out / THUMBS).glob("*.jpg"))
    decodable = {r["sha256"] for r in rows if r["p_malignant"]}
    assert {p.stem for p in thumbs} == decodable  # corrupt and non-image files have none
    for p in thumbs:
        assert p.stat().st_size <= 15_000
        with Image.open(p) as img:
            assert img.format == "JPEG" and max(img.size) <= 240


def test_thumbnails_come_from_the_sort_s_own_decode(sample_images, tmp_path, monkeypatch):
    import dermsort.runtime.preprocess as pre

    calls = []
    real = pre.open_image

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(pre, "open_image", counting)
    out = tmp_path / "out"
    _sort(sample_images, out)
    assert len(calls) == len(list(sample_images.iterdir()))  # one decode per image, page included
    assert len(list((out / THUMBS).glob("*.jpg"))) == len(calls)


def test_near_threshold_is_symmetric():
    assert near_threshold(0.06, 0.059) and near_threshold(0.05, 0.059)
    assert not near_threshold(0.2, 0.059) and not near_threshold(0.01, 0.059) and not near_threshold(None, 0.5)


def test_report_command_rebuilds_page_and_missing_thumbnails(sorted_out, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(sorted_out, out)
    shutil.rmtree(out / THUMBS)  # a run from before the review page existed
    (out / REPORT).unlink()
    res = subprocess.run([sys.executable, "-m", "dermsort.cli", "report", str(out)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert {p.stem for p in (out / THUMBS).glob("*.jpg")} == {r["sha256"] for r in _rows(out) if r["p_malignant"]}
    _check_page(out, (out / REPORT).read_text())
    # no results.csv: one line, non-zero, no traceback
    res = subprocess.run([sys.executable, "-m", "dermsort.cli", "report", str(tmp_path)], capture_output=True,
                         text=True, timeout=60)
    lines = res.stderr.strip().splitlines()
    assert res.returncode != 0 and len(lines) == 1 and "no results.csv" in lines[0], res.stderr


def test_page_says_when_the_bundle_is_gone(tmp_path, sample_images, tiny_bundle):
    # a bundle other than the default one (an edited manifest would be refused: integrity record)
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    out = tmp_path / "out"
    _sort(sample_images, out, "--model", str(bundle), "--threshold", "0.3")
    assert "Sensitivity" in (out / REPORT).read_text()
    shutil.rmtree(bundle)
    (out / RUN_INFO).unlink()  # as after a run from before the page existed
    build_report(out)
    text = (out / REPORT).read_text()
    assert 'id="nobundle"' in text and "was not found" in text and "Sensitivity" not in text
    assert 'id="override"' in text  # the journal still says the threshold was overridden


def test_dry_run_writes_no_page(sample_images, tmp_path):
    _sort(sample_images, tmp_path / "out", "--dry-run")
    assert not (tmp_path / "out").exists()


def test_watch_refreshes_the_page(sample_images, tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["watch", str(sample_images), "--out", str(out), "--backend", "onnxruntime",
                                   "--interval", "0.1", "--settle", "0", "--max-cycles", "3"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    text = (out / REPORT).read_text()
    assert f'<li id="n-sorted"><b>{len(list(sample_images.iterdir()))}</b>' in text


def test_left_in_place_files_are_listed_and_escaped(sorted_out, tmp_path):
    out = tmp_path / "o"
    shutil.copytree(sorted_out, out)
    build_report(out, run={"left_in_place": [{"file": f"/in/{HOSTILE}", "reason": "unreadable: permission denied "
                                                                                  "(cannot copy)"}]})
    text = (out / REPORT).read_text()
    dom = _parse(text)
    left = text.split('id="left"')[1].split("</section>")[0]
    assert "unreadable: permission denied" in left and "&lt;img src=x" in left
    assert '<li id="n-left"><b>1</b>' in text
    assert not [(t, a) for t, a in dom.elements for k in a if k.startswith("on")]
    build_report(out)  # `dermsort report` later: the run's list is kept with the page
    assert "unreadable: permission denied" in (out / REPORT).read_text()


def test_refresher_is_rate_limited(sorted_out, tmp_path):
    out = tmp_path / "o"
    shutil.copytree(sorted_out, out)
    refresher = ReportRefresher(out, None, min_interval=3600)
    assert refresher.refresh({}) is True
    assert refresher.refresh({}) is False  # within the interval: skipped
    assert refresher.refresh({}, force=True) is True


def test_save_thumbnail_never_raises_and_leaves_the_image_alone(tmp_path):
    img = Image.open(labelled("ph2", "test", 1)[0]["path"]).convert("RGB")
    before = img.tobytes()
    sha = "a" * 64
    blocker = tmp_path / "file"
    blocker.write_text("x")
    save_thumbnail(img, blocker, sha)  # thumbs "folder" is a file: nothing happens, nothing raised
    save_thumbnail(img, tmp_path, "../../etc/passwd")  # not a sha256: refused
    save_thumbnail(None, tmp_path, sha)  # not an image
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
    save_thumbnail(img, tmp_path / "t", sha)
    assert img.tobytes() == before and (tmp_path / "t" / f"{sha}.jpg").stat().st_size <= 15_000
    assert not [p for p in (tmp_path / "t").iterdir() if p.suffix != ".jpg"]  # no temp file left


def _quote(dest: str) -> str:
    from urllib.parse import quote

    return quote(dest, safe="/")


# ---------------------------------------------------------------------------------------------- browser
def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
                  "--hide-scrollbars", "--virtual-time-budget=3000"]


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium is not installed (scripts/test.sh installs the "
                    "Debian package `chromium` where apt-get can; it could not here)")
def test_page_in_headless_chromium(sorted_out, tmp_path):
    url = (sorted_out / REPORT).resolve().as_uri()
    res = subprocess.run([_chromium(), *CHROMIUM_FLAGS, "--dump-dom", url], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    dom = _check_page(sorted_out, res.stdout)
    rows = _rows(sorted_out)
    # the page's own script ran (allowed by its hash) and sorted/counted the cards; no name's script ran
    assert dom.find("html", **{"data-ready": "1"}), "the page's script did not run"
    assert f"{len(rows)} of {len(rows)} images shown" in res.stdout
    assert dom.find("div", id="override", role="alert")
    review = res.stdout.split('id="review"')[1].split("</section>")[0]
    ps = [float(p) for p in re.findall(r'data-p="([0-9.]+)"', review)]
    assert ps == sorted(ps, reverse=True) and ps  # highest p first by default
    # search, folder filter and order, as a saved view in the URL (what the keys and menus drive)
    target = next(r for r in rows if r["decision"] == "benign")
    stem = Path(target["dest"]).stem.lower()
    res = subprocess.run([_chromium(), *CHROMIUM_FLAGS, "--dump-dom", f"{url}#q={stem}&show=benign&order=p-asc"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    view = _parse(res.stdout)
    visible = [a for t, a in view.elements if t == "li" and "card" in a.get("class", "") and "hidden" not in a]
    expected = [r for r in rows if r["decision"] == "benign" and stem in Path(r["dest"]).name.lower()]
    assert len(visible) == len(expected) >= 1 and all(a["data-folder"] == "benign" for a in visible)
    assert f"{len(expected)} of {len(rows)} images shown" in res.stdout
    shot = Path(os.environ.get("DERMSORT_REPORT_SCREENSHOT") or tmp_path / "report.png")
    res = subprocess.run([_chromium(), *CHROMIUM_FLAGS, "--window-size=1280,1500", f"--screenshot={shot}", url],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    with Image.open(shot) as img:
        assert img.size == (1280, 1500)
        # the red override banner is drawn near the top
        top = np.asarray(img.convert("RGB").crop((0, 0, 1280, 200))).reshape(-1, 3).astype(int)
        assert ((top[:, 0] > 150) & (top[:, 1] < 40) & (top[:, 2] < 60)).sum() > 10_000
