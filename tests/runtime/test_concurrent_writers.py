"""Another program working on the input while dermsort sorts it (the dermatoscope's export software
writes, pauses, renames, edits EXIF afterwards, deletes), and a damaged journal. Each test here
failed on the sorter before issue 12 (see docs/RELIABILITY.md, "Writers and damaged journals")."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dermsort.runtime import placement as placement_mod
from fault_harness import copy_corpus as _corpus
from fault_harness import read_journal, sha256, small_real_images, tree, wait_for
from fault_harness import sort_json as _sort

PY = [sys.executable, "-m", "dermsort.cli"]


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _on_disk(out: Path) -> dict[str, str]:
    return {f"{sub}/{k}": v for sub in ("benign", "review") for k, v in tree(out / sub).items()}


def assert_results_match_disk(out: Path) -> None:
    """Every file in benign/ and review/ has exactly one results.csv row, with its sha256 and decision."""
    disk = _on_disk(out)
    rows = [r for r in _rows(out) if r["status"] != "missing from OUT"]
    assert sorted(r["dest"] for r in rows) == sorted(disk), "results.csv rows != files on disk"
    for r in rows:
        assert disk[r["dest"]] == r["sha256"], f"{r['dest']}: the file is not what was classified"
        assert r["dest"].split("/")[0] == r["decision"]
        if r["decision"] == "benign":
            assert r["p_malignant"] and float(r["p_malignant"]) < float(r["threshold"]), r


def _watch(inp: Path, out: Path, bundle: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([*PY, "watch", str(inp), "--out", str(out), "--model", str(bundle), "--backend",
                             "onnxruntime", "--interval", "0.1", "--settle", "0.3", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stop(proc: subprocess.Popen) -> str:
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    return err


# ---------------------------------------------------------------------------------------- 1. writers still writing
@pytest.mark.parametrize("move", [True, False], ids=["move", "copy"])
def test_writer_paused_longer_than_settle_is_not_taken_while_open(tiny_bundle, tmp_path, move):
    """The writer keeps the file open and pauses 4x --settle halfway: nothing is placed or removed until it
    closes; then exactly one complete, classified copy."""
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    data = small_real_images(1, 0)[0].read_bytes()
    proc = _watch(inp, out, tiny_bundle, *(["--move"] if move else []))
    try:
        assert wait_for(lambda: (out / ".dermsort" / "journal.jsonl").exists(), 60), "watch did not start"
        big = inp / "big.jpg"
        with open(big, "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
            time.sleep(1.2)  # 4x --settle, the file held open for writing
            assert not read_journal(out).intents, "taken while a writer still had it open"
            assert big.exists()
            fh.write(data[len(data) // 2:])
        assert wait_for(lambda: len(read_journal(out).done) == 1 and (not move or not big.exists()), 30)
        time.sleep(0.5)
        _stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    j = read_journal(out)
    assert len(j.done_records) == 1 and j.done_records[0]["sha256"] == sha256_bytes(data)
    assert list(_on_disk(out).values()) == [sha256_bytes(data)]
    assert_results_match_disk(out)


def sha256_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_part_file_paused_then_renamed_ends_as_one_classified_photo(tiny_bundle, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    data = small_real_images(2, 0)[1].read_bytes()
    proc = _watch(inp, out, tiny_bundle, "--move")
    try:
        assert wait_for(lambda: (out / ".dermsort" / "journal.jsonl").exists(), 60), "watch did not start"
        part = inp / "photo.jpg.part"
        part.write_bytes(data[:3000])
        time.sleep(1.0)  # paused, closed: still a temporary name
        with open(part, "ab") as fh:
            fh.write(data[3000:])
        os.rename(part, inp / "photo.jpg")
        assert wait_for(lambda: len(read_journal(out).done) == 1 and not any(inp.iterdir()), 30)
        time.sleep(0.5)
        _stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _on_disk(out) == {next(iter(_on_disk(out))): sha256_bytes(data)}
    assert list(_on_disk(out)) in (["benign/photo.jpg"], ["review/photo.jpg"])
    assert_results_match_disk(out)


def test_copy_mode_truncated_then_completed_is_sorted_again_and_superseded(tiny_bundle, tmp_path, capsys):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    data = small_real_images(1, 0)[0].read_bytes()
    (inp / "scan.jpg").write_bytes(data[: len(data) // 3])
    rc, first, err = _sort(inp, out, tiny_bundle, capsys)
    assert rc == 0 and first["sorted"] == 1, err
    with open(inp / "scan.jpg", "ab") as fh:  # the writer finishes it later
        fh.write(data[len(data) // 3:])
    rc, second, err = _sort(inp, out, tiny_bundle, capsys)
    assert rc == 0 and second["sorted"] == 1, err
    rows = {r["dest"]: r for r in _rows(out)}
    assert len(rows) == 2
    new = [r for r in rows.values() if r["sha256"] == sha256_bytes(data)][0]
    old = [r for r in rows.values() if r["sha256"] != sha256_bytes(data)][0]
    assert old["status"].startswith(f"superseded by {new['dest']}") and new["status"] == ""
    assert "truncated" in old["reason"] or "corrupt" in old["reason"]
    assert_results_match_disk(out)


# ---------------------------------------------------------------------------------------- 2. replaced mid-move
def _replace_during_placement(monkeypatch, victim: Path, replacement: bytes, in_place: bool) -> list:
    """Right before the first batch is placed, another program replaces ``victim`` with other bytes of the
    same size and mtime: by rename over it (unzip -o, exiftool -P) or by rewriting it in place (cp -p)."""
    real = placement_mod.Placer.place_batch
    done: list = []

    def place_batch(self, records, summary):
        if not done:
            st = victim.stat()
            if in_place:  # blocks while we hold the read lease: run it as the other program would
                def rewrite():
                    with open(victim, "r+b") as fh:
                        fh.write(replacement)
                    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
                t = threading.Thread(target=rewrite)
                t.start()
                done.append(t)
                time.sleep(0.3)
            else:
                tmp = victim.with_name(".unzip-tmp")
                tmp.write_bytes(replacement)
                os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
                os.replace(tmp, victim)
                done.append(None)
        return real(self, records, summary)

    monkeypatch.setattr(placement_mod.Placer, "place_batch", place_batch)
    return done


@pytest.mark.parametrize("in_place", [False, True], ids=["renamed-over", "rewritten-in-place"])
@pytest.mark.parametrize("cross_fs", [False, True], ids=["same-fs", "cross-fs"])
def test_input_replaced_by_same_size_same_mtime_file_during_move(tiny_bundle, tmp_path, capsys, monkeypatch,
                                                                  in_place, cross_fs):
    inp, out = tmp_path / "in", tmp_path / "out"
    originals = _corpus(inp, 4)
    victim = inp / sorted(originals)[1]
    old = victim.read_bytes()
    other = small_real_images(9, 0)[8].read_bytes()
    replacement = (other + b"\0" * len(old))[: len(old)]  # other image bytes, padded/cut to the same size
    assert replacement != old
    if cross_fs:
        monkeypatch.setattr(placement_mod.Placer, "can_link_source", lambda self, d: False)
    threads = _replace_during_placement(monkeypatch, victim, replacement, in_place)
    rc, summary, err = _sort(inp, out, tiny_bundle, capsys, "--move", "--threshold", "1.0", "--batch-size", "8")
    for t in threads:
        if t is not None:
            t.join(timeout=60)
    assert rc in (0, 3), err
    # what is in the output is exactly what was classified, never the replacement under the old one's p
    assert_results_match_disk(out)
    # the replacement was not deleted unsorted: it is still in the input
    assert victim.exists() and victim.read_bytes() == replacement
    monkeypatch.undo()
    rc, summary, err = _sort(inp, out, tiny_bundle, capsys, "--move", "--threshold", "1.0")
    assert rc == 0, err
    assert not any(inp.iterdir())
    placed = sorted(_on_disk(out).values())
    assert sha256_bytes(replacement) in placed
    for name, digest in originals.items():
        if name != victim.name:
            assert placed.count(digest) == 1
    assert_results_match_disk(out)


# ---------------------------------------------------------------------------------------- 3. vanished mid-move
@pytest.mark.parametrize("cross_fs", [False, True], ids=["same-fs", "cross-fs"])
def test_source_deleted_by_its_owner_mid_move_is_a_per_file_event(tiny_bundle, tmp_path, capsys, monkeypatch,
                                                                   cross_fs):
    inp, out = tmp_path / "in", tmp_path / "out"
    originals = _corpus(inp, 6)
    victim = inp / sorted(originals)[2]
    if cross_fs:
        monkeypatch.setattr(placement_mod.Placer, "can_link_source", lambda self, d: False)
    real = placement_mod.Placer.place_batch

    def place_batch(self, records, summary):
        if victim.exists():
            victim.unlink()  # the owner deletes it after we read it
        return real(self, records, summary)

    monkeypatch.setattr(placement_mod.Placer, "place_batch", place_batch)
    rc, summary, err = _sort(inp, out, tiny_bundle, capsys, "--move", "--batch-size", "3")
    assert rc in (0, 3), err
    assert "cannot write" not in err and "Traceback" not in err
    assert summary["sorted"] >= 5  # the run went on
    assert not any(inp.iterdir())
    placed = sorted(_on_disk(out).values())
    for name, digest in originals.items():
        if name != victim.name:
            assert placed.count(digest) == 1
    assert_results_match_disk(out)


def test_watch_survives_a_source_deleted_mid_move(tiny_bundle, tmp_path, monkeypatch):
    """``watch`` does not die when a file vanishes between scan and placement (in-process, one cycle)."""
    from dermsort.runtime.bundle import load_bundle
    from dermsort.runtime.engine import open_backend
    from dermsort.runtime.scan import scan
    from dermsort.runtime.sorter import SortOptions, Sorter

    inp, out = tmp_path / "in", tmp_path / "out"
    originals = _corpus(inp, 3)
    bundle, _ = load_bundle(tiny_bundle)
    sorter = Sorter(inp, SortOptions(out=out, move=True), open_backend(bundle, "onnxruntime"))
    sorter.open()
    try:
        files = scan(inp, False)
        files[0].path.unlink()
        summary = sorter.run(files)
    finally:
        sorter.close()
    assert summary.sorted == 2 and any("vanished" in x["reason"] for x in summary.left_in_place)
    assert len(_on_disk(out)) == 2 and len(originals) == 3


# ---------------------------------------------------------------------------------------- 4. damaged journal
def _damage(journal: Path, how: str) -> None:
    data = journal.read_bytes()
    if how == "deleted":
        journal.unlink()
    elif how == "cut-mid-line":
        journal.write_bytes(data[: len(data) // 2])
    elif how == "garbage-line":
        lines = data.splitlines(keepends=True)
        lines.insert(len(lines) // 2, b"\x00\xffnot json at all {{{\n")
        lines.insert(3, b"[1, 2, 3]\n")
        journal.write_bytes(b"".join(lines))


@pytest.mark.parametrize("how", ["deleted", "cut-mid-line", "garbage-line"])
@pytest.mark.parametrize("move", [False, True], ids=["copy", "move"])
def test_damaged_journal_is_reconciled_with_the_output(tiny_bundle, tmp_path, capsys, how, move):
    inp, out = tmp_path / "in", tmp_path / "out"
    originals = _corpus(inp, 8)
    flag = ["--move"] if move else []
    rc, first, err = _sort(inp, out, tiny_bundle, capsys, *flag, "--batch-size", "2")
    assert rc == 0 and first["sorted"] == 8, err
    _damage(out / ".dermsort" / "journal.jsonl", how)
    _corpus(inp, 2, offset=8)  # and two new images arrive
    everything = sorted([*originals.values(), *(sha256(p) for p in small_real_images(10, 0)[8:])])
    rc, again, err = _sort(inp, out, tiny_bundle, capsys, *flag)
    assert rc == 0, err
    warnings = [line for line in err.splitlines() if "journal" in line and "damaged" in line]
    assert len(warnings) == 1, err
    assert again["sorted"] == 2  # only the new ones: no __1 duplicates of what was already sorted
    assert not any("__" in name for name in _on_disk(out)), sorted(_on_disk(out))
    assert sorted(_on_disk(out).values()) == everything
    assert_results_match_disk(out)
    rc, third, err = _sort(inp, out, tiny_bundle, capsys, *flag)
    assert rc == 0 and third["sorted"] == 0 and "damaged" not in err  # reconciled once, then quiet
    assert sorted(_on_disk(out).values()) == everything


def test_unrecorded_file_in_benign_that_the_model_would_not_put_there_moves_to_review(tiny_bundle, tmp_path,
                                                                                       capsys):
    inp, out = tmp_path / "in", tmp_path / "out"
    originals = _corpus(inp, 8)
    rc, first, err = _sort(inp, out, tiny_bundle, capsys, "--threshold", "1.0")  # everything benign
    assert rc == 0 and first["benign"] == 8, err
    (out / ".dermsort" / "journal.jsonl").unlink()
    rc, again, err = _sort(inp, out, tiny_bundle, capsys)  # the validated threshold again
    assert rc == 0 and again["sorted"] == 0, err
    assert_results_match_disk(out)  # every file in benign/ is below the threshold now
    assert tree(out / "review"), "the tiny model sends about half of these to review"
    assert sorted(_on_disk(out).values()) == sorted(originals.values())


def test_without_a_lease_a_writer_is_found_through_proc(tiny_bundle, tmp_path, monkeypatch):
    """A service user that does not own the file gets no lease (EACCES): /proc/*/fd shows the writer."""
    import errno

    from dermsort.runtime import fileops

    real = fileops.fcntl.fcntl

    def no_lease(fd, cmd, *a):
        if cmd == fileops._F_SETLEASE and a and a[0] == fileops.fcntl.F_RDLCK:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(fd, cmd, *a)

    monkeypatch.setattr(fileops.fcntl, "fcntl", no_lease)
    monkeypatch.setattr(fileops.linux, "PROC_SCAN_TTL", 0.0)
    path = tmp_path / "busy.jpg"
    path.write_bytes(small_real_images(1, 0)[0].read_bytes())
    from dermsort.runtime.metadata import PreprocessSpec
    from dermsort.runtime.reading import STILL_WRITTEN, decode_one
    from dermsort.runtime.scan import Candidate

    st = path.stat()
    with open(path, "r+b"):  # another program (here: this one) holds it open for writing
        d = decode_one(Candidate(path, st.st_size, st.st_mtime_ns), PreprocessSpec())
        assert d.skip == STILL_WRITTEN and d.guard is not None and d.guard.method == "proc"
    d = decode_one(Candidate(path, st.st_size, st.st_mtime_ns), PreprocessSpec())
    try:
        assert not d.skip and d.sha256 and d.guard.method == "proc" and d.guard.intact()
        with open(path, "r+b"):
            assert not d.guard.intact()  # a writer that opened it after the read is seen too
    finally:
        d.close()
