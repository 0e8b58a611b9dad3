"""Never overwrite, never trust without checking, and the smaller promises of issue 12 item 8. Several tests
here exist to catch a specific deliberate bug (docs/RELIABILITY.md, "Mutation checklist")."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dermsort.runtime import placement as placement_mod
from dermsort.runtime import reading as reading_mod
from dermsort.runtime import sorter as sorter_mod
from fault_harness import copy_corpus as _corpus
from fault_harness import read_journal, sha256, small_real_images, tree, wait_for
from fault_harness import sort_json as _sort

PY = [sys.executable, "-m", "dermsort.cli"]


# ---------------------------------------------------------------------------------------- mutation: overwrite
@pytest.mark.parametrize("move", [False, True], ids=["copy", "move"])
def test_a_taken_destination_is_never_replaced_even_when_the_name_chooser_is_wrong(tiny_bundle, tmp_path, capsys,
                                                                                  monkeypatch, move):
    """The name chooser is made to pick names that exist; ``link`` must still refuse to replace them."""
    inp, out = tmp_path / "in", tmp_path / "out"
    originals = _corpus(inp, 3)
    hand = {}
    for sub in ("benign", "review"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for name in originals:
            (out / sub / name).write_bytes(f"a clinician's own file {sub}/{name}".encode())
            hand[f"{sub}/{name}"] = sha256(out / sub / name)
    real = placement_mod.Placer.unique_dest
    lied = []

    def unique_dest(self, decision, name):
        if len(lied) < 3 and (self.out / decision / name).exists():
            lied.append(name)
            return f"{decision}/{name}"  # wrong: this name is taken
        return real(self, decision, name)

    monkeypatch.setattr(placement_mod.Placer, "unique_dest", unique_dest)
    rc, summary, err = _sort(inp, out, tiny_bundle, capsys, *(["--move"] if move else []))
    assert rc == 0 and summary["sorted"] == 3, err
    assert lied
    for rel, digest in hand.items():
        assert sha256(out / rel) == digest, f"{rel} was overwritten"
    placed = [sha256(out / r["dest"]) for r in read_journal(out).done_records]
    assert sorted(placed) == sorted(originals.values())


# ---------------------------------------------------------------------------------------- mutation: recovery
def test_recovery_checks_the_sha256_of_a_placed_file_not_only_that_it_exists(tiny_bundle, tmp_path, capsys):
    inp, out = tmp_path / "in", tmp_path / "out"
    originals = _corpus(inp, 4)
    rc, _, err = _sort(inp, out, tiny_bundle, capsys)
    assert rc == 0, err
    journal = out / ".dermsort" / "journal.jsonl"
    lines = journal.read_text().splitlines(keepends=True)
    recs = [json.loads(line) for line in lines]
    victim = next(r for r in recs if r["event"] == "intent")
    # as if killed after the link of a (damaged) copy, before its done record: the name exists, the bytes differ
    journal.write_text("".join(line for line, r in zip(lines, recs)
                               if not (r["event"] == "done" and r["id"] == victim["id"])))
    (out / victim["dest"]).write_bytes(b"not the image that was classified")
    rc, _, err = _sort(inp, out, tiny_bundle, capsys)
    assert rc == 0, err
    j = read_journal(out)
    assert victim["id"] in j.aborted and victim["id"] not in j.done, "recovery trusted a file it did not check"
    good = [r for r in j.done_records if r["file"] == victim["file"]]
    assert good and all(sha256(out / r["dest"]) == r["sha256"] == originals[Path(victim["file"]).name] for r in good)


# ---------------------------------------------------------------------------------------- item 8
def test_failed_results_csv_write_is_an_error_not_success(tiny_bundle, tmp_path, capsys, monkeypatch):
    inp, out = tmp_path / "in", tmp_path / "out"
    _corpus(inp, 2)

    def broken(state, target):
        raise OSError(errno.EIO, "Input/output error", str(target))

    monkeypatch.setattr(sorter_mod, "write_results_csv", broken)
    rc, summary, err = _sort(inp, out, tiny_bundle, capsys)
    assert rc == 2, err
    assert err.strip().splitlines()[-1].startswith("dermsort: error: could not write") and "results.csv" in err
    monkeypatch.undo()
    rc, summary, err = _sort(inp, out, tiny_bundle, capsys)
    assert rc == 0 and (out / "results.csv").is_file(), err


def test_output_inside_input_through_a_bind_mount_is_refused(tiny_bundle, tmp_path, capsys):
    inp = tmp_path / "in"
    _corpus(inp, 1)
    (inp / "sub").mkdir()
    view = tmp_path / "view"
    view.mkdir()
    res = subprocess.run(["mount", "--bind", str(inp), str(view)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot bind-mount here (needs root and mount rights): {res.stderr.strip()}")
    try:
        rc, _, err = _sort(inp, view / "sub" / "out", tiny_bundle, capsys)
        assert rc == 2 and "inside the input folder" in err, err
        rc, _, err = _sort(view / "sub", inp, tiny_bundle, capsys)
        assert rc == 2 and "inside the output folder" in err, err
        assert not (inp / "sub" / "out").exists()
    finally:
        subprocess.run(["umount", str(view)], check=False)


def test_name_too_long_for_the_output_file_system_is_shortened(tiny_bundle, tmp_path, capsys, monkeypatch):
    """An output file system with a 100-byte NAME_MAX (eCryptfs, some NAS shares): a few tries, not 202 records."""
    inp, out = tmp_path / "in", tmp_path / "out"
    src = small_real_images(1, 0)[0]
    inp.mkdir()
    long = ("lesion-" * 30)[:200] + ".jpg"
    shutil.copyfile(src, inp / long)
    real = os.link

    def link(a, b, **kw):
        if len(os.fsencode(os.path.basename(os.fspath(b)))) > 100 and "/out/" in os.fspath(b):
            raise OSError(errno.ENAMETOOLONG, "File name too long", os.fspath(b))
        return real(a, b, **kw)

    monkeypatch.setattr(placement_mod.os, "link", link)
    rc, summary, err = _sort(inp, out, tiny_bundle, capsys)
    assert rc == 0 and summary["sorted"] == 1, err
    j = read_journal(out)
    assert len(j.intents) <= 4, f"{len(j.intents)} journal records for one file"
    dest = j.done_records[0]["dest"]
    assert len(os.fsencode(Path(dest).name)) <= 100 and dest.endswith(".jpg")


def test_watch_stops_with_one_line_when_its_input_folder_is_deleted(tiny_bundle, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    _corpus(inp, 1)
    proc = subprocess.Popen([*PY, "watch", str(inp), "--out", str(out), "--model", str(tiny_bundle), "--backend",
                             "onnxruntime", "--interval", "0.1", "--settle", "0.1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: len(read_journal(out).done) == 1 if (out / ".dermsort").exists() else False, 60)
        shutil.rmtree(inp)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("dermsort: error: input folder") and "disappeared" in last and "Traceback" not in err


@pytest.mark.parametrize("cross_fs", [False, True], ids=["same-fs", "cross-fs"])
def test_transient_read_error_during_move_leaves_the_file_unplaced(tiny_bundle, tmp_path, capsys, monkeypatch,
                                                                   cross_fs):
    inp, out = tmp_path / "in", tmp_path / "out"
    originals = _corpus(inp, 3)
    victim = inp / sorted(originals)[1]
    victim_ino = victim.stat().st_ino
    real = os.pread
    failed = []

    def pread(fd, n, offset):
        if not failed and offset > 0 and os.fstat(fd).st_ino == victim_ino:
            failed.append(True)
            raise OSError(errno.EIO, "Input/output error")
        return real(fd, n, offset)

    monkeypatch.setattr(reading_mod.os, "pread", pread)
    if cross_fs:
        monkeypatch.setattr(placement_mod.Placer, "can_link_source", lambda self, d: False)
    rc, summary, err = _sort(inp, out, tiny_bundle, capsys, "--move")
    assert rc == 3, err  # left in place: a distinct exit code
    assert failed and victim.exists() and sha256(victim) == originals[victim.name]
    assert all(r["sha256"] for r in read_journal(out).done_records), "placed unclassified, without a sha256"
    assert any("read error" in x["reason"] for x in summary["left_in_place"])
    monkeypatch.undo()
    rc, summary, err = _sort(inp, out, tiny_bundle, capsys, "--move")
    assert rc == 0 and summary["sorted"] == 1, err


def test_error_messages_never_end_in_none(tmp_path):
    from dermsort.runtime.bundle import load_bundle
    from dermsort.runtime.engine import open_backend
    from dermsort.runtime.sorter import SortOptions, Sorter

    bundle, _ = load_bundle(None)
    inp = tmp_path / "in"
    _corpus(inp, 1)
    sorter = Sorter(inp, SortOptions(out=tmp_path / "o"), open_backend(bundle, "onnxruntime", artifact_name="onnx-fp32"))
    msg = str(sorter._output_error(OSError(errno.EIO, "Input/output error"), "sorting"))
    assert "None" not in msg and msg.endswith("Input/output error")


def test_pillow_warnings_do_not_leak_to_stderr(tiny_bundle, tmp_path):
    """A real image whose EXIF block is damaged: Pillow warns while reading it; nothing of that reaches stderr."""
    import struct

    from PIL import Image

    inp = tmp_path / "in"
    inp.mkdir()
    exif = (b"Exif\x00\x00II*\x00\x08\x00\x00\x00" + struct.pack("<H", 3)
            + b"\x0f\x01\x02\x00\xff\xff\x00\x00\x10\x00\x00\x00")
    with Image.open(small_real_images(1, 0)[0]) as im:
        buf = io.BytesIO()
        im.convert("RGB").save(buf, "JPEG", quality=95, exif=exif)
    (inp / "damaged-exif.jpg").write_bytes(buf.getvalue())
    env = dict(os.environ, PYTHONWARNINGS="default")
    res = subprocess.run([*PY, "sort", str(inp), "--out", str(tmp_path / "o"), "--model", str(tiny_bundle),
                          "--backend", "onnxruntime"], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stderr == "", res.stderr
    assert len(tree(tmp_path / "o" / "benign")) + len(tree(tmp_path / "o" / "review")) == 1
