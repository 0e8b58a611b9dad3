"""Duplicates and stale records: nothing is lost, but OUT must not say something wrong (issue 27, section 3)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fault_harness import copy_corpus, read_journal, sha256, tree
from fault_harness import sort_json as _sort
from test_crash_and_hostile_env import tmpfs  # noqa: F401 - the real small tmpfs fixture


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _placed(out: Path) -> dict[str, str]:
    return {f"{sub}/{k}": v for sub in ("benign", "review") for k, v in tree(out / sub).items()}


def _assert_each_image_once(out: Path, originals: dict[str, str]) -> None:
    placed = _placed(out)
    assert sorted(placed.values()) == sorted(originals.values()), \
        f"OUT holds duplicates or misses images: {sorted(placed)}"
    rows = _rows(out)
    assert sorted(r["dest"] for r in rows) == sorted(placed), "results.csv rows differ from the files in OUT"


def _edit_journal(out: Path, edit) -> None:
    path = out / ".dermsort" / "journal.jsonl"
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(r) + "\n" for r in edit(recs)))


def test_intent_whose_file_no_longer_exists_does_not_sort_the_real_input_again(tiny_bundle, tmp_path, capsys):
    inp, out = tmp_path / "in", tmp_path / "out"
    originals = copy_corpus(inp, 4)
    rc, _, err = _sort(inp, out, tiny_bundle, capsys)
    assert rc == 0, err
    victim = next(r for r in read_journal(out).done_records)

    def elsewhere(recs):  # the journal names the input by a path that is gone (card mounted elsewhere, folder renamed)
        for r in recs:
            if r.get("id") == victim["id"] and r["event"] == "intent":
                r["file"] = str(tmp_path / "old-mount" / Path(r["file"]).name)
        return recs

    _edit_journal(out, elsewhere)
    rc, summary, err = _sort(inp, out, tiny_bundle, capsys)
    assert rc == 0, err
    _assert_each_image_once(out, originals)
    assert [s["file"] for s in summary["same_as_sorted"]] == [victim["file"]]


@pytest.mark.parametrize("move", [False, True], ids=["copy", "then-move"])
def test_renamed_input_is_recorded_as_already_sorted_not_copied_again(tiny_bundle, tmp_path, capsys, move):
    inp, out = tmp_path / "in", tmp_path / "out"
    originals = copy_corpus(inp, 4)
    rc, _, err = _sort(inp, out, tiny_bundle, capsys)
    assert rc == 0, err
    first = sorted(inp.iterdir())[0]
    renamed = inp / "renamed.jpg"
    os.rename(first, renamed)
    rc, summary, err = _sort(inp, out, tiny_bundle, capsys, *(["--move"] if move else []))
    assert rc == 0, err
    _assert_each_image_once(out, originals)
    assert [s["file"] for s in summary["same_as_sorted"]] == [str(renamed)]
    assert summary["benign"] + summary["review"] == 0
    row = next(r for r in _rows(out) if r["sha256"] == sha256(out / r["dest"]) == originals[first.name])
    assert row["file"] == str(renamed), "results.csv should name the input as it is now"
    assert renamed.exists() != move, "--move removes the renamed source: its image is in OUT"
    if not move:  # the terminal summary says so too
        from dermsort.cli import main

        os.rename(renamed, inp / "renamed-twice.jpg")
        capsys.readouterr()
        main(["sort", str(inp), "--out", str(out), "--model", str(tiny_bundle), "--backend", "onnxruntime"])
        text = capsys.readouterr().out
        assert "already sorted under another name" in text and "no images found" not in text
        _assert_each_image_once(out, originals)


def test_intent_without_sha256_or_dest_is_damage_not_a_row(tiny_bundle, tmp_path, capsys):
    inp, out = tmp_path / "in", tmp_path / "out"
    originals = copy_corpus(inp, 4)
    rc, _, err = _sort(inp, out, tiny_bundle, capsys)
    assert rc == 0, err
    victim = read_journal(out).done_records[0]

    def strip(recs):
        for r in recs:
            if r.get("id") == victim["id"] and r["event"] == "intent":
                r.pop("sha256"), r.pop("dest")
        return recs

    _edit_journal(out, strip)
    rc, _, err = _sort(inp, out, tiny_bundle, capsys)
    assert rc == 0, err
    assert "damaged" in err
    rows = _rows(out)
    assert all(r["dest"] for r in rows), "a results.csv row without a destination"
    _assert_each_image_once(out, originals)
    assert len([r for r in rows if r["sha256"] == victim["sha256"]]) == 1


def test_lost_source_removed_record_does_not_leave_source_kept_forever(tiny_bundle, tmp_path, capsys):
    inp, out = tmp_path / "in", tmp_path / "out"
    originals = copy_corpus(inp, 4)
    rc, _, err = _sort(inp, out, tiny_bundle, capsys, "--move")
    assert rc == 0, err
    assert not tree(inp)
    # a torn tail cut by the next start: the last source_removed records never made it to the journal
    _edit_journal(out, lambda recs: [r for r in recs if r["event"] != "source_removed"])
    rc, _, err = _sort(inp, out, tiny_bundle, capsys, "--move")
    assert rc == 0, err
    rows = _rows(out)
    assert len(rows) == len(originals)
    assert not [r for r in rows if r["status"] == "source kept"], "the sources are gone, not kept"
    # and it stays that way (recorded, not re-derived on every run)
    rc, _, err = _sort(inp, out, tiny_bundle, capsys, "--move")
    assert not [r for r in _rows(out) if r["status"]]


def test_disk_full_leaves_results_csv_and_no_partial_copies(tiny_bundle, tmp_path, tmpfs):  # noqa: F811
    from fault_harness import check_no_loss, make_corpus

    inp = tmp_path / "in"
    originals = make_corpus(inp, n_kaggle=60, n_isic=30, n_dup=10)  # ~3 MB, more than fits
    mnt = tmpfs("1m")
    out = mnt.where / "out"
    res = subprocess.run([sys.executable, "-m", "dermsort.cli", "sort", str(inp), "--out", str(out), "--model",
                          str(tiny_bundle), "--backend", "onnxruntime", "--recursive"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "disk full" in res.stderr
    check_no_loss(originals, inp, out)
    assert not list((out / ".dermsort" / "tmp").glob("*.part")), "partial copies left until the next run"
    assert (out / "results.csv").is_file(), "no results.csv after a disk-full failure"
    done = {r["dest"] for r in read_journal(out).done_records}
    assert {r["dest"] for r in _rows(out)} <= done


@pytest.mark.parametrize("move", [False, True], ids=["copy", "move"])
def test_renamed_input_whose_copy_in_out_is_gone_is_sorted_again_not_claimed(tiny_bundle, tmp_path, capsys, move):
    inp, out = tmp_path / "in", tmp_path / "out"
    originals = copy_corpus(inp, 3)
    rc, _, err = _sort(inp, out, tiny_bundle, capsys)
    assert rc == 0, err
    first = sorted(inp.iterdir())[0]
    rec = next(r for r in read_journal(out).done_records if r["file"] == str(first))
    (out / rec["dest"]).write_bytes(b"damaged")  # the copy in OUT no longer holds the image
    os.rename(first, inp / "renamed.jpg")
    rc, summary, err = _sort(inp, out, tiny_bundle, capsys, *(["--move"] if move else []))
    assert rc == 0, err
    assert summary["same_as_sorted"] == []
    assert originals[first.name] in _placed(out).values(), "the image is in OUT again"
