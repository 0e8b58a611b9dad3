"""Reliability properties of ``dermsort sort`` / ``watch``: never overwrite, idempotent re-runs,
--move across file systems, model integrity, no network, no torch, one-line CLI errors, watch mode,
graceful stop. (SIGKILL and environment faults: tests/runtime/test_crash_and_hostile_env.py; hostile input: tests/runtime/test_bad_input_goes_to_review.py.)"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from dermsort.cli import main
from dermsort.runtime.bundle import decision_digest
from dermsort.runtime import placement as placement_mod
from dermsort.runtime import sorter as sorter_mod
from fault_harness import (check_final, check_no_loss, read_journal, restore_signal_handlers,  # noqa: F401
                           sha256, small_real_images, tree, wait_for)
from fault_harness import copy_corpus as _corpus
from fault_harness import sort_json as _sort

PY = [sys.executable, "-m", "dermsort.cli"]


def _snapshot(out: Path) -> dict[str, tuple[str, int]]:
    """Every file under OUT (journal and results.csv included) with its content hash and mtime."""
    return {str(p.relative_to(out)): (sha256(p), p.stat().st_mtime_ns)
            for p in sorted(out.rglob("*")) if p.is_file() and p.name != "lock"}


# ---------------------------------------------------------------------------------------- never overwrite
def test_name_clashes_get_a_suffix_and_nothing_is_overwritten(tiny_bundle, tmp_path, capsys):
    inp, out = tmp_path / "in", tmp_path / "out"
    originals = _corpus(inp, 4)
    names = sorted(originals)
    for sub in ("visit 2", "visit 3"):  # the same names again in subfolders, other content
        (inp / sub).mkdir()
        for i, name in enumerate(names):
            shutil.copyfile(inp / names[(i + 1) % len(names)], inp / sub / name)
    originals = tree(inp)
    # files a person put into the output by hand, under the very names the sorter would choose
    hand = {}
    for sub in ("benign", "review"):
        (out / sub).mkdir(parents=True)
        for name in names:
            (out / sub / name).write_bytes(f"hand-placed {sub}/{name}".encode())
            hand[f"{sub}/{name}"] = sha256(out / sub / name)
    rc, summary, err = _sort(inp, out, tiny_bundle, capsys, "--recursive")
    assert rc == 0, err
    assert summary["sorted"] == len(originals) == 12
    for rel, digest in hand.items():
        assert sha256(out / rel) == digest  # untouched
    done = read_journal(out).done_records
    assert Counter(r["relpath"] for r in done) == Counter(set(originals))  # each original -> exactly one final path
    for rec in done:
        assert sha256(out / rec["dest"]) == originals[rec["relpath"]]
        assert rec["dest"] not in hand and "__" in rec["dest"]
    assert len(tree(out / "benign")) + len(tree(out / "review")) == len(hand) + len(originals)


def test_long_names_clash_within_name_max(tiny_bundle, tmp_path, capsys):
    """A 255-byte name needs a suffix on a clash: shortened, never 'File name too long' for the whole run."""
    inp, out = tmp_path / "in", tmp_path / "out"
    long = "é" * 124 + "x.jpeg"  # 254 bytes in UTF-8: "__1" would make it 257
    imgs = small_real_images(3, 0)
    for i, sub in enumerate(("a", "b", "c")):
        (inp / sub).mkdir(parents=True)
        shutil.copyfile(imgs[i], inp / sub / long)
    rc, summary, err = _sort(inp, out, tiny_bundle, capsys, "--recursive")
    assert rc == 0, err
    assert summary["sorted"] == 3
    dests = [r["dest"] for r in read_journal(out).done_records]
    assert len(set(dests)) == 3 and all(len(os.fsencode(Path(d).name)) <= 255 for d in dests)
    assert all(d.endswith(".jpeg") for d in dests)


def test_destination_taken_between_choice_and_link_gets_a_new_name(tiny_bundle, tmp_path, capsys, monkeypatch):
    """Someone drops a file into review/ at the very moment: the placement is re-issued, not lost or overwritten."""
    inp, out = tmp_path / "in", tmp_path / "out"
    originals = _corpus(inp, 3)
    real_link = os.link
    sneaked = []

    def link(src, dst, **kw):
        if not sneaked and "/.dermsort/" in os.fspath(src):
            sneaked.append(Path(dst))
            Path(dst).write_bytes(b"a person was faster")
        return real_link(src, dst, **kw)

    monkeypatch.setattr(sorter_mod.os, "link", link)
    rc, summary, err = _sort(inp, out, tiny_bundle, capsys, "--threshold", "1.0")
    assert rc == 0, err
    assert summary["sorted"] == 3
    assert sneaked[0].read_bytes() == b"a person was faster"
    j = read_journal(out)
    assert len(j.aborted) == 1
    assert sorted(sha256(out / r["dest"]) for r in j.done_records) == sorted(originals.values())


# ---------------------------------------------------------------------------------------- idempotency
@pytest.mark.parametrize("move", [False, True], ids=["copy", "move"])
def test_rerun_changes_nothing_and_new_files_only_are_sorted(tiny_bundle, tmp_path, capsys, move):
    inp, out = tmp_path / "in", tmp_path / "out"
    originals = _corpus(inp, 6)
    flag = ["--move"] if move else []
    rc, first, err = _sort(inp, out, tiny_bundle, capsys, *flag)
    assert rc == 0 and first["sorted"] == 6, err
    before, input_before = _snapshot(out), tree(inp)
    journal_bytes = (out / ".dermsort" / "journal.jsonl").read_bytes()
    rc, again, err = _sort(inp, out, tiny_bundle, capsys, *flag)
    assert rc == 0, err
    assert again["sorted"] == 0 and again["skipped_already_sorted"] == (0 if move else 6)
    assert _snapshot(out) == before  # contents and time stamps: results.csv not even rewritten
    assert (out / ".dermsort" / "journal.jsonl").read_bytes() == journal_bytes
    assert tree(inp) == input_before
    # new files arrive, and an old name with new content (copy mode: the old file changed): only they are sorted
    new = {}
    for p in small_real_images(9, 0)[6:]:
        shutil.copyfile(p, inp / p.name)
        new[p.name] = sha256(p)
    shutil.copyfile(small_real_images(10, 0)[9], inp / sorted(originals)[0])
    new[sorted(originals)[0]] = sha256(inp / sorted(originals)[0])
    done_before = set(read_journal(out).done)
    rc, third, err = _sort(inp, out, tiny_bundle, capsys, *flag)
    assert rc == 0, err
    assert third["sorted"] == len(new) == 4
    fresh = [r for r in read_journal(out).done_records if r["id"] not in done_before]
    assert sorted((r["relpath"], r["sha256"]) for r in fresh) == sorted(new.items())
    for rel in before:  # what was there is still there, unchanged
        if rel.startswith(("benign/", "review/")):
            assert sha256(out / rel) == before[rel][0]


# ---------------------------------------------------------------------------------------- --move across file systems
def _other_fs_mount(tmp_path: Path):
    """A real second file system: a fresh tmpfs if we may mount, else /dev/shm if it is one."""
    where = tmp_path / "mnt"
    where.mkdir()
    if os.geteuid() == 0 and shutil.which("mount"):
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(where)], capture_output=True)
        if res.returncode == 0:
            return where, lambda: subprocess.run(["umount", "-l", str(where)], capture_output=True)
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and os.stat(shm).st_dev != os.stat(tmp_path).st_dev:
        target = shm / f"dermsort-test-{os.getpid()}-{time.monotonic_ns()}"
        target.mkdir()
        return target, lambda: shutil.rmtree(target, ignore_errors=True)
    pytest.skip("no second file system here (mount not permitted and /dev/shm is not a separate tmpfs); "
                "the monkeypatched cross-fs tests cover the logic")


def test_move_to_a_real_other_file_system(tiny_bundle, tmp_path, capsys):
    inp = tmp_path / "in"
    originals = _corpus(inp, 8)
    where, cleanup = _other_fs_mount(tmp_path)
    try:
        out = where / "out"
        assert os.stat(where).st_dev != os.stat(inp).st_dev
        rc, summary, err = _sort(inp, out, tiny_bundle, capsys, "--move")
        assert rc == 0, err
        check_final(originals, inp, out, move=True)
        assert json.loads((out / ".dermsort" / "journal.jsonl").read_text().splitlines()[0])["mode"] == "move"
    finally:
        cleanup()


def _cross_fs(monkeypatch):
    monkeypatch.setattr(placement_mod.Placer, "can_link_source", lambda self, d: False)


@pytest.mark.parametrize("failure", ["write", "fsync", "verify", "link"])
def test_cross_fs_move_failure_at_any_step_leaves_the_source(tiny_bundle, tmp_path, capsys, monkeypatch, failure):
    inp, out = tmp_path / "in", tmp_path / "out"
    originals = _corpus(inp, 6)
    _cross_fs(monkeypatch)
    calls = Counter()

    def nth(n=3):
        calls["n"] += 1
        return calls["n"] == n

    if failure == "write":
        real_w = placement_mod.write_durable
        monkeypatch.setattr(placement_mod, "write_durable", lambda p, data, *a: (
            (_ for _ in ()).throw(OSError(errno.EIO, "Input/output error", str(p))) if nth() else real_w(p, data, *a)))
    elif failure == "fsync":
        real_f = os.fsync
        monkeypatch.setattr(sorter_mod.os, "fsync", lambda fd: (
            (_ for _ in ()).throw(OSError(errno.EIO, "Input/output error")) if nth(12) else real_f(fd)))
    elif failure == "verify":
        real_h = placement_mod.sha256_file
        monkeypatch.setattr(placement_mod, "sha256_file", lambda p, drop_cache=False: (
            "0" * 64 if drop_cache and nth() else real_h(p, drop_cache=drop_cache)))
    else:
        real_l = os.link
        monkeypatch.setattr(sorter_mod.os, "link", lambda s, d, **kw: (
            (_ for _ in ()).throw(OSError(errno.EIO, "Input/output error", str(d))) if nth() else real_l(s, d, **kw)))
    rc, _, err = _sort(inp, out, tiny_bundle, capsys, "--move", "--batch-size", "4")
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dermsort: error:"), err
    if failure == "verify":
        assert "did not verify" in err
    check_no_loss(originals, inp, out)
    j = read_journal(out)
    for rec in j.intents.values():  # a source is gone only if its placement is done and verified
        if not (inp / rec["relpath"]).exists():
            assert rec["id"] in j.done and sha256(out / rec["dest"]) == rec["sha256"]
    monkeypatch.undo()
    _cross_fs(monkeypatch)
    rc, _, err = _sort(inp, out, tiny_bundle, capsys, "--move")
    assert rc == 0, err
    check_final(originals, inp, out, move=True)


def test_source_that_cannot_be_removed_is_sorted_and_reported(tiny_bundle, tmp_path, capsys, monkeypatch):
    """A write-protected card with --move: the verified copy is sorted, the source stays and is listed."""
    inp, out = tmp_path / "in", tmp_path / "out"
    originals = _corpus(inp, 4)
    _cross_fs(monkeypatch)
    real_unlink = os.unlink

    def unlink(path, *a, **kw):
        if Path(path).parent == inp:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_unlink(path, *a, **kw)

    monkeypatch.setattr(sorter_mod.os, "unlink", unlink)
    rc, summary, err = _sort(inp, out, tiny_bundle, capsys, "--move")
    assert rc == 0, err
    assert summary["sorted"] == 4 and len(summary["sources_kept"]) == 4
    assert tree(inp) == originals
    assert sorted({**tree(out / "benign"), **tree(out / "review")}.values()) == sorted(originals.values())
    monkeypatch.setattr(sorter_mod.os, "unlink", real_unlink)
    rc, summary, err = _sort(inp, out, tiny_bundle, capsys, "--move")  # the card is writable again
    assert rc == 0 and summary["sorted"] == 0, err
    check_final(originals, inp, out, move=True)


@pytest.mark.parametrize("errno_", [errno.EXDEV, errno.EPERM], ids=["bind-mount-EXDEV", "no-hardlinks-EPERM"])
@pytest.mark.parametrize("move", [False, True], ids=["copy", "move"])
def test_link_refused_falls_back_to_a_verified_copy(tiny_bundle, tmp_path, capsys, monkeypatch, errno_, move):
    """Same st_dev but link() says EXDEV (bind mounts), or a file system without hard links (exFAT)."""
    inp, out = tmp_path / "in", tmp_path / "out"
    originals = _corpus(inp, 6)
    real_link = os.link

    def link(src, dst, **kw):
        if errno_ == errno.EPERM or "/.dermsort/" not in os.fspath(src):
            raise OSError(errno_, os.strerror(errno_), os.fspath(src))
        return real_link(src, dst, **kw)

    monkeypatch.setattr(sorter_mod.os, "link", link)
    rc, summary, err = _sort(inp, out, tiny_bundle, capsys, *(["--move"] if move else []))
    assert rc == 0, err
    check_final(originals, inp, out, move=move)


# ---------------------------------------------------------------------------------------- CLI, model, network
def _one_line(res: subprocess.CompletedProcess, needle: str, usage: bool = False) -> None:
    lines = [l for l in res.stderr.strip().splitlines() if l.strip()]
    assert res.returncode != 0, res
    assert "Traceback" not in res.stderr, res.stderr
    if usage:  # click's usage errors: usage lines, then one "Error:" line
        assert lines[-1].startswith("Error:") and needle in lines[-1], res.stderr
    else:
        assert len(lines) == 1 and lines[0].startswith("dermsort: error:") and needle in lines[0], res.stderr


def _junk_model_bundle(tiny_bundle: Path, junk: Path) -> None:
    """A copy of ``tiny_bundle`` whose model.onnx is not a model, listed with its right checksum in a
    consistent (re-sealed) manifest: only loading it can fail."""
    shutil.copytree(tiny_bundle, junk)
    (junk / "model.onnx").write_bytes(b"\x00not an onnx model" * 100)
    manifest = json.loads((junk / "manifest.json").read_text())
    for art in manifest["artifacts"]:
        if art["path"] == "model.onnx":
            art["sha256"] = sha256(junk / "model.onnx")
    manifest["integrity"] = {"sha256": decision_digest(manifest)}
    (junk / "manifest.json").write_text(json.dumps(manifest))


def test_cli_bad_input_one_line_errors(tiny_bundle, tmp_path):
    inp = tmp_path / "in"
    _corpus(inp, 2)
    bad = tmp_path / "tampered"
    shutil.copytree(tiny_bundle, bad)
    data = bytearray((bad / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    (bad / "model.onnx").write_bytes(bytes(data))
    junk = tmp_path / "junk-model"  # listed in the manifest with the right checksum, but not a model
    _junk_model_bundle(tiny_bundle, junk)
    unreadable = tmp_path / "unreadable-model"
    shutil.copytree(tiny_bundle, unreadable)
    (unreadable / "manifest.json").write_bytes(b"\xff\xfe garbage")
    base = ["sort", str(inp), "--backend", "onnxruntime"]
    cases = [
        ("input folder not found", ["sort", str(tmp_path / "missing"), "--model", str(tiny_bundle)], False),
        ("input is not a folder", ["sort", str(tiny_bundle / "model.onnx"), "--model", str(tiny_bundle)], False),
        ("checksum mismatch", [*base, "--model", str(bad), "--out", str(tmp_path / "o1")], False),
        ("cannot read", [*base, "--model", str(unreadable), "--out", str(tmp_path / "o3")], False),
        ("model not found", [*base, "--model", str(tmp_path / "nomodel")], False),
        ("unknown backend", ["sort", str(inp), "--model", str(tiny_bundle), "--backend", "quantum"], False),
        ("inside the input folder", [*base, "--model", str(tiny_bundle), "--out", str(inp / "sorted")], False),
        ("--threshold", [*base, "--model", str(tiny_bundle), "--threshold", "1.5"], False),
        ("batch-size", [*base, "--model", str(tiny_bundle), "--batch-size", "0"], True),
    ]
    for needle, args, usage in cases:
        res = subprocess.run([*PY, *args], capture_output=True, text=True, timeout=120)
        _one_line(res, needle, usage)
    for out in ("o1", "o3"):
        assert not (tmp_path / out).exists()  # a refused model writes nothing
    # a file listed with the right checksum that is not a model: refused, nothing written
    res = subprocess.run([*PY, *base, "--model", str(junk), "--out", str(tmp_path / "o2")], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode != 0 and "Traceback" not in res.stderr and not (tmp_path / "o2").exists()
    assert res.stderr.strip().splitlines()[-1].startswith("dermsort: error: no backend could load the model")


def test_cli_unloadable_model_is_one_line(tiny_bundle, tmp_path):
    inp = tmp_path / "in"
    _corpus(inp, 1)
    junk = tmp_path / "junk-model"
    _junk_model_bundle(tiny_bundle, junk)
    res = subprocess.run([*PY, "sort", str(inp), "--backend", "onnxruntime", "--model", str(junk)],
                         capture_output=True, text=True, timeout=120)
    _one_line(res, "could load the model")


def test_cli_no_write_permission(tiny_bundle, tmp_path):
    inp = tmp_path / "in"
    originals = _corpus(inp, 2)
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(0o500)
        cleanup = lambda: ro.chmod(0o700)  # noqa: E731
    else:  # root ignores chmod: a read-only tmpfs instead
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True)
        if res.returncode != 0:
            pytest.skip("running as root (chmod does not bite) and cannot mount a read-only tmpfs; "
                        "see tests/runtime/test_crash_and_hostile_env.py for the monkeypatched variants")
        cleanup = lambda: subprocess.run(["umount", "-l", str(ro)], capture_output=True)  # noqa: E731
    try:
        res = subprocess.run([*PY, "sort", str(inp), "--out", str(ro / "out"), "--model", str(tiny_bundle),
                              "--backend", "onnxruntime", "--move"], capture_output=True, text=True, timeout=120)
    finally:
        cleanup()
    _one_line(res, "no write permission")
    assert tree(inp) == originals


def test_unreadable_model_file_permission_error(tiny_bundle, tmp_path, capsys, monkeypatch):
    """chmod 000 on the model does not stop root; the PermissionError it would raise is injected."""
    import builtins

    inp = tmp_path / "in"
    _corpus(inp, 2)
    model = str(tiny_bundle / "model.onnx")
    real_open = builtins.open

    def deny(file, *a, **kw):
        if isinstance(file, (str, os.PathLike)) and os.fspath(file) == model:
            raise PermissionError(errno.EACCES, "Permission denied", model)
        return real_open(file, *a, **kw)

    monkeypatch.setattr(builtins, "open", deny)
    capsys.readouterr()
    rc = main(["sort", str(inp), "--out", str(tmp_path / "o"), "--model", str(tiny_bundle), "--backend", "onnxruntime"])
    err = capsys.readouterr().err
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dermsort: error:") and "Permission denied" in lines[0], err


SANDBOX = textwrap.dedent('''
    import os, socket, sys, atexit
    attempts = []
    def audit(event, args):
        if event in ("socket.connect", "socket.bind", "socket.getaddrinfo", "socket.sendto", "socket.gethostbyname"):
            attempts.append(event)
            raise OSError("network access forbidden by the test")
    sys.addaudithook(audit)
    def report():
        fds = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                    fds.append(fd)
            except OSError:
                pass
        bad = sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "dermsort.train",
                     "dermsort.export", "dermsort.bench")))
        with open(os.environ["SANDBOX_REPORT"], "w") as fh:
            fh.write(repr({"attempts": attempts, "socket_fds": fds, "heavy_modules": bad}))
    atexit.register(report)
''')


def test_sort_opens_no_socket_and_never_imports_torch(tiny_bundle, tmp_path):
    inp = tmp_path / "in"
    _corpus(inp, 4)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SANDBOX)
    report = tmp_path / "report.txt"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
               SANDBOX_REPORT=str(report))
    env.pop("DERMSORT_FAULT_AT", None)
    res = subprocess.run([*PY, "sort", str(inp), "--out", str(tmp_path / "o"), "--model", str(tiny_bundle),
                          "--backend", "auto", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["sorted"] == 4
    found = eval(report.read_text())  # noqa: S307 - our own repr
    assert found == {"attempts": [], "socket_fds": [], "heavy_modules": []}


# ---------------------------------------------------------------------------------------- stop, lock, watch
def test_second_sorter_on_the_same_output_is_refused(tiny_bundle, tmp_path):
    from dermsort.runtime.bundle import load_bundle
    from dermsort.runtime.engine import open_backend
    from dermsort.runtime.errors import OutputError
    from dermsort.runtime.sorter import SortOptions, Sorter

    inp, out = tmp_path / "in", tmp_path / "out"
    _corpus(inp, 1)
    bundle, _ = load_bundle(tiny_bundle)
    backend = open_backend(bundle, "onnxruntime")
    first = Sorter(inp, SortOptions(out=out), backend)
    first.open()
    try:
        with pytest.raises(OutputError, match="another dermsort is already sorting"):
            Sorter(inp, SortOptions(out=out), backend).open()
    finally:
        first.close()


@pytest.mark.parametrize("sig", ["TERM", "INT"])
def test_sigterm_during_sort_stops_cleanly_with_nonzero_exit(tiny_bundle, tmp_path, sig):
    inp, out = tmp_path / "in", tmp_path / "out"
    originals = _corpus(inp, 12)
    env = dict(os.environ, DERMSORT_FAULT_AT=f"done:2:{sig}")  # the signal arrives right after batch 2
    res = subprocess.run([*PY, "sort", str(inp), "--out", str(out), "--model", str(tiny_bundle), "--backend",
                          "onnxruntime", "--batch-size", "2", "--move"], capture_output=True, text=True, env=env,
                         timeout=120)
    err = res.stderr
    assert res.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("dermsort: error: stopped on request"), err
    j = read_journal(out)
    assert not j.pending and not j.torn_tail  # a graceful stop finishes the batch it is in
    check_no_loss(originals, inp, out)
    assert tree(inp), "the stop should have come before the end"
    res = subprocess.run([*PY, "sort", str(inp), "--out", str(out), "--model", str(tiny_bundle), "--backend",
                          "onnxruntime", "--move"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    check_final(originals, inp, out, move=True)


def test_watch_takes_each_file_once_after_it_stops_growing_and_stops_on_sigterm(tiny_bundle, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    proc = subprocess.Popen([*PY, "watch", str(inp), "--out", str(out), "--model", str(tiny_bundle), "--backend",
                             "onnxruntime", "--move", "--interval", "0.2", "--settle", "1.0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: (out / ".dermsort" / "journal.jsonl").exists(), 60), "watch did not start"
        imgs = small_real_images(4, 0)
        originals = {}
        for p in imgs[:3]:  # dropped in at once (written to a hidden name, then renamed, like a careful copier)
            shutil.copyfile(p, inp / f".{p.name}.tmp")
            os.rename(inp / f".{p.name}.tmp", inp / p.name)
            originals[p.name] = sha256(inp / p.name)
        slow = inp / "slow-camera-upload.jpg"
        data = imgs[3].read_bytes()
        originals[slow.name] = sha256(imgs[3])
        chunks = 6
        with open(slow, "wb") as fh:  # written in chunks, 0.4 s apart (less than --settle)
            for i in range(chunks):
                fh.write(data[i * len(data) // chunks:(i + 1) * len(data) // chunks])
                fh.flush()
                time.sleep(0.4)
                assert not any(r["relpath"] == slow.name for r in read_journal(out).intents.values()), \
                    "taken while still growing"
        assert wait_for(lambda: len(read_journal(out).done) == 4 and not any(inp.iterdir()), 30)
        time.sleep(0.6)  # a few more scans: nothing is taken twice
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        assert time.monotonic() - start < 5
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
    j = read_journal(out)
    assert len(j.intents) == 4 and not j.pending and not j.torn_tail
    check_final(originals, inp, out, move=True)
