"""Faults: SIGKILL at every step and at random times (the crash test), and a hostile environment
(read-only output, disk full, output folder removed mid-run). Afterwards nothing is lost or
duplicated, the journal agrees with the folders, and a re-run completes everything."""

from __future__ import annotations

import errno
import os
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from dermsort.cli import main
from dermsort.runtime import faults as faults_mod
from dermsort.runtime import journal as journal_mod
from dermsort.runtime import placement as placement_mod
from dermsort.runtime import recovery as recovery_mod
from dermsort.runtime import sorter as sorter_mod
from dermsort.runtime.faults import FAULT_STEPS
from dermsort.runtime.journal import Journal
from dermsort.runtime.records import Done, Intent
from fault_harness import (CrashStats, check_final, check_no_loss, count_lost, make_corpus, read_journal,  # noqa: F401
                           restore_signal_handlers, run_sort, sort_cmd, tree)

#: occurrences per run are drawn from 1..N: per file, per batch, per journal write, per run
STEP_RANGE = {"tmp_written": 40, "intent": 5, "link": 40, "dir_fsync": 5, "done": 5, "unlink": 40,
              "journal_write": 12, "recovered": 1, "results": 1}
#: >= 200 kills in all (copy + move); DERMSORT_CRASH_KILLS overrides it for a quick local check
KILLS_PER_MODE = int(os.environ.get("DERMSORT_CRASH_KILLS", "110"))
MAX_KILLS_PER_ROUND = 12


def _other_fs(tmp_path: Path) -> Path | None:
    """A folder on another file system than tmp_path (/dev/shm is a tmpfs almost everywhere)."""
    shm = Path("/dev/shm")
    try:
        if shm.is_dir() and os.access(shm, os.W_OK) and os.stat(shm).st_dev != os.stat(tmp_path).st_dev:
            return Path(os.path.realpath(shm))
    except OSError:
        pass
    return None


def _campaign(tmp_path: Path, bundle: Path, move: bool, seed: int) -> CrashStats:
    rng = random.Random(seed)
    stats = CrashStats()
    start = time.monotonic()
    steps = [s for s in FAULT_STEPS if move or s != "unlink"]
    # deterministic first: every step boundary at its first and at a later occurrence
    schedule = [f"{s}:{n}" for s in steps for n in sorted({1, max(1, STEP_RANGE[s] // 2)})]
    corpus = tmp_path / "corpus"
    originals = make_corpus(corpus)
    shm = _other_fs(tmp_path)
    scratch: list[Path] = []

    def fresh(r: int) -> tuple[Path, Path]:
        inp = tmp_path / f"in{r}"
        shutil.copytree(corpus, inp)
        # --move: every other round sorts onto another file system (copy + fsync + verify + unlink)
        base = shm if (move and shm is not None and r % 2 == 1) else tmp_path
        out = base / f"dermsort-crash-{os.getpid()}-{seed}-out{r}"
        scratch.extend([inp, out])
        return inp, out

    r = 0
    inp, out = fresh(r)
    kills_in_round = 0
    try:
        while True:
            done_killing = stats.kills >= KILLS_PER_MODE and not schedule
            fault, delay = None, None
            if kills_in_round >= MAX_KILLS_PER_ROUND or done_killing:
                pass  # a clean run finishes the round
            elif schedule:
                fault = schedule.pop(0)
            elif rng.random() < 0.3:
                delay = rng.uniform(0.05, 1.2)  # random time: startup, recovery, decoding, placing...
            else:
                step = rng.choice(steps)
                fault = f"{step}:{rng.randint(1, STEP_RANGE[step])}"
            rc = run_sort(sort_cmd(inp, out, bundle, move, "--batch-size", "8", "--workers", "2"), fault, delay)
            stats.runs += 1
            if rc != 0:
                stats.kills += 1
                kills_in_round += 1
                if fault:
                    stats.fault_kills += 1
                    stats.steps[fault.split(":")[0]] += 1
                else:
                    stats.timed_kills += 1
                lost = count_lost(originals, inp, out)  # counted, so the figure printed is measured
                stats.lost += len(lost)
                if not lost:
                    check_no_loss(originals, inp, out)
                continue
            stats.files_checked += check_final(originals, inp, out, move)
            stats.rounds += 1
            for p in (inp, out):
                shutil.rmtree(p, ignore_errors=True)
            if done_killing:
                break
            r += 1
            inp, out = fresh(r)
            kills_in_round = 0
    finally:
        for p in scratch:
            shutil.rmtree(p, ignore_errors=True)
    stats.seconds = time.monotonic() - start
    return stats


@pytest.mark.slow
@pytest.mark.parametrize("move", [False, True], ids=["copy", "move"])
def test_crash_safety_under_sigkill(tiny_bundle, tmp_path, move, capsys):
    stats = _campaign(tmp_path, tiny_bundle, move, seed=20240 + move)
    with capsys.disabled():
        print("\n" + stats.line("move" if move else "copy"))
    assert stats.kills >= KILLS_PER_MODE and stats.lost == 0
    assert stats.fault_kills >= len(stats.steps) and stats.rounds >= 2
    assert set(stats.steps) == {s for s in FAULT_STEPS if move or s != "unlink"}  # every step boundary hit


# ---------------------------------------------------------------------------------------- helpers
def _small_corpus(folder: Path, n: int = 24) -> dict[str, str]:
    from fault_harness import small_real_images

    folder.mkdir(parents=True, exist_ok=True)
    for p in small_real_images(n, 0):
        shutil.copyfile(p, folder / p.name)
    return tree(folder)


def _main(args: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(args)
    err = capsys.readouterr().err
    return rc, err


def _one_error_line(err: str, needle: str) -> None:
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("dermsort: error:") and needle in lines[0], err
    assert "Traceback" not in err


def _args(inp: Path, out: Path, bundle: Path, *extra: str) -> list[str]:
    return ["sort", str(inp), "--out", str(out), "--model", str(bundle), "--backend", "onnxruntime",
            "--batch-size", "4", "--workers", "1", *extra]


def _hook(monkeypatch, step: str, nth: int, action) -> None:
    """Run ``action`` at the nth time the sorter reaches ``step`` (the fault hook, in-process)."""
    seen = Counter()

    def point(name: str) -> bool:
        seen[name] += 1
        if name == step and seen[name] == nth:
            action()
        return False

    monkeypatch.setattr(placement_mod, "fault_point", point)
    monkeypatch.setattr(recovery_mod, "fault_point", point)


# ---------------------------------------------------------------------------------------- mounts
class _Mount:
    """A small tmpfs (root + mount needed; CI may not allow it)."""

    def __init__(self, where: Path, size: str):
        self.where = where
        where.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("real tmpfs mount needs root and mount(8); covered by the monkeypatched variant")
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip()}); covered by the monkeypatched variant")

    def remount(self, opts: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{opts}", str(self.where)], check=True, capture_output=True)

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.where)], capture_output=True)


@pytest.fixture
def tmpfs(tmp_path):
    mounts = []

    def make(size: str = "2m") -> _Mount:
        m = _Mount(tmp_path / f"mnt{len(mounts)}", size)
        mounts.append(m)
        return m

    yield make
    for m in mounts:
        m.close()


# ---------------------------------------------------------------------------------------- disk full
@pytest.mark.parametrize("move", [False, True], ids=["copy", "move"])
def test_disk_full_real_tmpfs_then_rerun_completes(tiny_bundle, tmp_path, tmpfs, capsys, move):
    inp = tmp_path / "in"
    originals = make_corpus(inp, n_kaggle=60, n_isic=30, n_dup=10)  # ~3 MB, more than fits
    mnt = tmpfs("1m")
    out = mnt.where / "out"
    args = _args(inp, out, tiny_bundle, "--recursive", *(["--move"] if move else []))
    res = subprocess.run([sys.executable, "-m", "dermsort.cli", *args], capture_output=True, text=True, timeout=120)
    rc, err = res.returncode, res.stderr
    assert rc != 0
    _one_error_line(err, "disk full")
    check_no_loss(originals, inp, out)
    assert read_journal(out).done, "some images should have been sorted before the disk filled up"
    mnt.remount("size=64m")  # free space
    rc, err = _main(_args(inp, out, tiny_bundle, "--recursive", *(["--move"] if move else [])), capsys)
    assert rc == 0, err
    check_final(originals, inp, out, move)


def test_disk_full_injected_enospc_then_rerun_completes(tiny_bundle, tmp_path, capsys, monkeypatch):
    inp = tmp_path / "in"
    originals = _small_corpus(inp)
    out = tmp_path / "out"
    real = placement_mod.write_durable
    calls = Counter()

    def full(path, data, *a, **kw):
        calls["n"] += 1
        if calls["n"] > 9:
            with open(path, "wb") as fh:  # a partial staging file, as a real ENOSPC leaves
                fh.write(data[: len(data) // 3])
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data, *a, **kw)

    monkeypatch.setattr(placement_mod, "write_durable", full)
    rc, err = _main(_args(inp, out, tiny_bundle), capsys)
    assert rc != 0
    _one_error_line(err, "disk full")
    check_no_loss(originals, inp, out)
    assert not list((out / ".dermsort" / "tmp").glob("*.part")), "the partial copy should be removed at once"
    assert (out / "results.csv").is_file(), "a failed run still leaves results.csv"
    monkeypatch.setattr(placement_mod, "write_durable", real)
    rc, err = _main(_args(inp, out, tiny_bundle), capsys)
    assert rc == 0, err
    check_final(originals, inp, out, move=False)


@pytest.mark.parametrize("fail_at", [1, 3])
def test_model_call_failing_while_the_batch_before_is_placed(tiny_bundle, tmp_path, capsys, monkeypatch, fail_at):
    """The sorter places batch k-1 while batch k's model call runs on its inference thread. A model call
    that fails there: one error line; every batch scored before it is placed completely, nothing of the
    failing batch or the one after it is recorded or moved; a re-run sorts the rest."""
    from dermsort.runtime.backends.base import Backend

    inp = tmp_path / "in"
    originals = _small_corpus(inp, 16)
    out = tmp_path / "out"
    real = Backend.infer
    calls = Counter()

    def failing(self, batch):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise RuntimeError("device lost\nsecond line")
        return real(self, batch)

    monkeypatch.setattr(Backend, "infer", failing)
    rc, err = _main(_args(inp, out, tiny_bundle, "--move"), capsys)
    assert rc != 0
    _one_error_line(err, "the model call failed on onnxruntime (RuntimeError: device lost)")
    check_no_loss(originals, inp, out)
    placed = [p for sub in ("benign", "review") for p in (out / sub).iterdir()]
    assert len(placed) == 4 * (fail_at - 1), "every batch scored before the failure is placed, none after it"
    assert len(list(inp.iterdir())) == len(originals) - len(placed), "--move removed exactly the placed sources"
    monkeypatch.setattr(Backend, "infer", real)
    rc, err = _main(_args(inp, out, tiny_bundle, "--move"), capsys)
    assert rc == 0, err
    check_final(originals, inp, out, move=True)


#: what every intent carries besides its file (an intent without them is damage: records.is_record)
_PLACED = {"dest": "review/x.jpg", "sha256": "0" * 64, "decision": "review"}


def test_journal_write_failure_is_rolled_back(tmp_path, monkeypatch):
    j = Journal(tmp_path / "journal.jsonl")
    j.open()
    j.record(Intent("a", file="/x", **_PLACED))
    before = j.path.read_bytes()
    real_write = os.write

    def half_then_enospc(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(journal_mod.os, "write", half_then_enospc)
    with pytest.raises(OSError):
        j.record(Intent("b", file="/y", **_PLACED), Done("b"))
    monkeypatch.setattr(journal_mod.os, "write", real_write)
    assert j.path.read_bytes() == before  # no torn line: the failed append left no trace
    assert "b" not in j.state.intents  # and nothing of it was folded into the state
    j.record(Done("a"))
    j.close()
    state = Journal(j.path).read()
    assert state.done == {"a"} and "b" not in state.intents


def test_torn_journal_tail_is_cut_and_unicode_names_roundtrip(tmp_path):
    path = tmp_path / "journal.jsonl"
    j = Journal(path)
    j.open()
    name = os.fsdecode(b"/in/l\xe9sion \xc3\xa9t\xc3\xa9.jpg")  # one Latin-1 byte, one valid UTF-8 name part
    j.record(Intent("a", file=name, **_PLACED), Done("a"))
    j.close()
    path.write_bytes(path.read_bytes() + b'{"event": "intent", "id": "b", "fi')  # killed mid-write
    path.read_bytes().decode("utf-8")  # the journal stays valid UTF-8
    state = Journal(path).read()
    assert state.by_source == {name: "a"} and "b" not in state.intents
    assert path.read_bytes().endswith(b"}\n")  # torn tail cut
    # a dry run (no lock) must not cut a torn tail under a running sorter's feet
    path.write_bytes(path.read_bytes() + b'{"torn')
    Journal(path).read(repair=False)
    assert path.read_bytes().endswith(b'{"torn')


# ---------------------------------------------------------------------------------------- read-only output
def test_read_only_output_real_mount(tiny_bundle, tmp_path, tmpfs):
    inp = tmp_path / "in"
    originals = _small_corpus(inp, 6)
    mnt = tmpfs("4m")
    mnt.remount("ro")
    res = subprocess.run([sys.executable, "-m", "dermsort.cli", *_args(inp, mnt.where / "out", tiny_bundle), "--move"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    _one_error_line(res.stderr, "no write permission")
    assert tree(inp) == originals


def test_read_only_output_chmod(tiny_bundle, tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod does not stop root from writing (covered by the mount and "
                    "monkeypatched variants)")
    inp, out = tmp_path / "in", tmp_path / "out"
    originals = _small_corpus(inp, 4)
    out.mkdir()
    out.chmod(0o500)
    try:
        rc, err = _main(_args(inp, out, tiny_bundle), capsys)
    finally:
        out.chmod(0o700)
    assert rc != 0
    _one_error_line(err, "no write permission")
    assert tree(inp) == originals


def test_output_turns_read_only_mid_run(tiny_bundle, tmp_path, capsys, monkeypatch):
    """ext4's errors=remount-ro, a write-protect switch: EROFS in the middle of a --move."""
    inp, out = tmp_path / "in", tmp_path / "out"
    originals = _small_corpus(inp, 16)
    real_link = os.link
    calls = Counter()

    def link(src, dst, **kw):
        calls["n"] += 1
        if calls["n"] > 6:
            raise OSError(errno.EROFS, "Read-only file system", str(dst))
        return real_link(src, dst, **kw)

    monkeypatch.setattr(sorter_mod.os, "link", link)
    rc, err = _main(_args(inp, out, tiny_bundle, "--move"), capsys)
    assert rc != 0
    _one_error_line(err, "no write permission")
    check_no_loss(originals, inp, out)
    monkeypatch.setattr(sorter_mod.os, "link", real_link)
    rc, err = _main(_args(inp, out, tiny_bundle, "--move"), capsys)
    assert rc == 0, err
    check_final(originals, inp, out, move=True)


# ---------------------------------------------------------------------------------------- output removed
@pytest.mark.parametrize("step,nth", [("intent", 2), ("link", 5), ("done", 2)])
def test_output_deleted_mid_run_copy(tiny_bundle, tmp_path, capsys, monkeypatch, step, nth):
    inp, out = tmp_path / "in", tmp_path / "out"
    originals = _small_corpus(inp, 16)
    _hook(monkeypatch, step, nth, lambda: shutil.rmtree(out))
    rc, err = _main(_args(inp, out, tiny_bundle), capsys)
    assert rc != 0
    _one_error_line(err, "disappeared")
    assert tree(inp) == originals
    monkeypatch.setattr(placement_mod, "fault_point", faults_mod.fault_point)
    rc, err = _main(_args(inp, out, tiny_bundle), capsys)
    assert rc == 0, err
    check_final(originals, inp, out, move=False)


@pytest.mark.parametrize("step,nth", [("link", 5), ("done", 2)])
def test_output_unmounted_mid_move_never_loses_a_source(tiny_bundle, tmp_path, capsys, monkeypatch, step, nth):
    """The output vanishes (card pulled: here renamed away) between placing and removing sources."""
    inp, out, gone = tmp_path / "in", tmp_path / "out", tmp_path / "out-gone"
    originals = _small_corpus(inp, 16)
    _hook(monkeypatch, step, nth, lambda: out.rename(gone))
    rc, err = _main(_args(inp, out, tiny_bundle, "--move"), capsys)
    assert rc != 0
    _one_error_line(err, "")
    assert "disappeared" in err or "vanished" in err, err
    check_no_loss(originals, inp, gone)  # every image is in the input or durably in the old output
    monkeypatch.setattr(placement_mod, "fault_point", faults_mod.fault_point)
    rc, err = _main(_args(inp, out, tiny_bundle, "--move"), capsys)
    assert rc == 0, err
    assert tree(inp) == {}
    both = [*tree(gone / "benign").values(), *tree(gone / "review").values(),
            *tree(out / "benign").values(), *tree(out / "review").values()]
    assert Counter(originals.values()) - Counter(both) == Counter()  # nothing lost
