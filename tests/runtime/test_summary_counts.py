"""No silent surprises in what ``sort`` says (issue 13, section 3): files in subfolders and hidden files
are counted, non-image files are counted apart and never called images, an empty folder says so, the
README documents results.csv exactly as written."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

from dermsort.cli import main
from dermsort.runtime.results_csv import RESULT_DOCS, RESULT_FIELDS
from fault_harness import small_real_images, tree

REPO = Path(__file__).resolve().parents[2]


def _sort(inp: Path, out: Path, bundle: Path, capsys, *extra: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["sort", str(inp), "--out", str(out), "--model", str(bundle), "--backend", "onnxruntime", *extra])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_subfolders_hidden_and_non_image_files_are_reported(tiny_bundle, tmp_path, capsys):
    inp = tmp_path / "in"
    (inp / "visit 2" / "deeper").mkdir(parents=True)
    imgs = small_real_images(5, 0)
    for p in imgs[:3]:
        shutil.copyfile(p, inp / p.name)
    shutil.copyfile(imgs[3], inp / "visit 2" / imgs[3].name)
    shutil.copyfile(imgs[4], inp / "visit 2" / "deeper" / imgs[4].name)
    (inp / ".hidden.jpg").write_bytes(imgs[0].read_bytes())
    (inp / "notes.txt").write_text("patient called back\n")
    (inp / "data.json").write_text("{}")
    rc, out, err = _sort(inp, tmp_path / "o", tiny_bundle, capsys)
    assert rc == 0, err
    assert "sorted 3 image(s)" in out and "2 not an image (in review/)" in out
    assert "2 file(s) in subfolders were not sorted (use --recursive)" in out
    assert "1 hidden file(s)" in out
    review = tree(tmp_path / "o" / "review")
    assert "notes.txt" in review and "data.json" in review  # never benign, never lost
    assert "notes.txt" not in tree(tmp_path / "o" / "benign")
    capsys.readouterr()
    rc = main(["sort", str(inp), "--out", str(tmp_path / "j2"), "--model", str(tiny_bundle), "--backend",
               "onnxruntime", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert (data["images"], data["not_images"], data["in_subfolders_not_sorted"], data["hidden_files_not_sorted"]) \
        == (3, 2, 2, 1)
    assert data["work_reduction"] == round(data["benign"] / 3, 4)  # over images only


def test_empty_folder_says_no_images_found(tiny_bundle, tmp_path, capsys):
    inp = tmp_path / "empty"
    inp.mkdir()
    rc, out, err = _sort(inp, tmp_path / "o", tiny_bundle, capsys)
    assert rc == 0, err
    assert f"no images found in {inp}" in out and "work reduction" not in out


def test_readme_documents_results_csv_exactly_as_written(tiny_bundle, tmp_path, capsys):
    readme = (REPO / "README.md").read_text()
    documented = re.findall(r"^  \| `([a-z0-9_]+)` \| (.+) \|$", readme, flags=re.M)
    assert [name for name, _ in documented] == RESULT_FIELDS
    assert all(text == RESULT_DOCS[name] for name, text in documented)
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copyfile(small_real_images(1, 0)[0], inp / "a.jpg")
    rc, _, err = _sort(inp, tmp_path / "o", tiny_bundle, capsys)
    assert rc == 0, err
    with open(tmp_path / "o" / "results.csv", newline="") as fh:
        assert next(csv.reader(fh)) == RESULT_FIELDS


def test_keep_tree_mirrors_subfolders_and_relpath_is_always_recorded(tiny_bundle, tmp_path, capsys):
    inp = tmp_path / "in"
    imgs = small_real_images(3, 0)
    for sub in ("", "patient A", "patient B/visit 2"):
        (inp / sub).mkdir(parents=True, exist_ok=True)
        for p in imgs:
            shutil.copyfile(p, inp / sub / p.name)  # the same names in every folder
    originals = {str(p.relative_to(inp)) for p in inp.rglob("*.jpg")}
    rc, out, err = _sort(inp, tmp_path / "flat", tiny_bundle, capsys, "--recursive")
    assert rc == 0, err
    with open(tmp_path / "flat" / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["relpath"] for r in rows} == originals  # flattened, but the sub-path is kept
    assert any("__" in r["dest"] for r in rows)
    rc, out, err = _sort(inp, tmp_path / "tree", tiny_bundle, capsys, "--recursive", "--keep-tree", "--move")
    assert rc == 0, err
    placed = {str(p.relative_to(tmp_path / "tree")).split("/", 1)[1] for sub in ("benign", "review")
              for p in (tmp_path / "tree" / sub).rglob("*") if p.is_file()}
    assert placed == originals  # the same layout under benign/ and review/, no __N
    assert not [p for p in inp.rglob("*") if p.is_file()]
    (tmp_path / "tree" / ".dermsort" / "journal.jsonl").unlink()  # nested files are reconciled too
    rc, out, err = _sort(inp, tmp_path / "tree", tiny_bundle, capsys, "--recursive", "--keep-tree")
    assert rc == 0 and "damaged" in err, err
    with open(tmp_path / "tree" / "results.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == len(originals)
