"""Ways to lose an image that a SIGKILL test alone does not see (issue 27, section 2).

Each test sets up, by hand, a state a killed ``--move`` run can leave (``DERMSORT_FAULT_AT=done:1``:
the done records are durable, the sources not yet removed) plus what another program did meanwhile,
re-runs the sorter and checks that every image still exists somewhere. The last test checks the
durability order of a ``--move`` sort directly from its system calls (strace), which no kill can show.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from dermsort.runtime.placement import capture_path
from fault_harness import copy_corpus, read_journal, run_sort, sha256, small_real_images, sort_cmd, tree


def _everything(*folders: Path) -> set[str]:
    """sha256 of every regular file under the folders (hidden names included)."""
    found: set[str] = set()
    for folder in folders:
        found |= set(tree(folder).values())
    return found


def _killed_after_done(inp: Path, out: Path, bundle: Path) -> list[dict]:
    """A --move sort killed right after its first done records; those records (sources still in the input)."""
    rc = run_sort(sort_cmd(inp, out, bundle, True, "--batch-size", "2"), fault="done:1")
    assert rc == -9, "the fault hook did not fire"
    j = read_journal(out)
    waiting = [r for r in j.done_records if os.path.exists(r["file"])]
    assert waiting, "no done record with its source still in place"
    return waiting


# ------------------------------------------------------------------------- (a) + (b): recovery of a captured source
@pytest.mark.parametrize("new_file_at_the_name", [False, True], ids=["replacement-at-capture",
                                                                      "replacement-and-new-file-at-the-name"])
def test_a_replacement_at_the_capture_name_is_never_deleted_nor_overwrites(tiny_bundle, tmp_path,
                                                                           new_file_at_the_name):
    inp, out = tmp_path / "in", tmp_path / "out"
    originals = copy_corpus(inp, 4)
    victim = _killed_after_done(inp, out, tiny_bundle)[0]
    others = small_real_images(12, 0)[8:]
    replacement, newcomer = others[0].read_bytes(), others[1].read_bytes()
    # as if killed after the source was renamed aside for its removal check, and another program then put other
    # bytes under the capture name (unzip -o, a sync tool) - and (b) wrote a new image under the original name
    source = Path(victim["file"])
    held = capture_path(source, victim["id"])
    os.rename(source, held)
    held.unlink()
    held.write_bytes(replacement)
    if new_file_at_the_name:
        source.write_bytes(newcomer)
    rc = run_sort(sort_cmd(inp, out, tiny_bundle, True))
    assert rc == 0
    everywhere = _everything(inp, out / "benign", out / "review")
    assert sha256(out / victim["dest"]) == victim["sha256"]
    assert hashlib_of(replacement) in everywhere, "the replacement at the capture name was deleted"
    if new_file_at_the_name:
        assert hashlib_of(newcomer) in everywhere, "the new file at the original name was overwritten"
    assert set(originals.values()) <= everywhere


def hashlib_of(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------- (c): a damaged verified copy
def test_source_is_kept_when_its_cross_fs_copy_was_damaged_after_the_done_record(tiny_bundle, tmp_path):
    from test_reliability import _other_fs_mount

    inp = tmp_path / "in"
    originals = copy_corpus(inp, 4)
    where, cleanup = _other_fs_mount(tmp_path)
    try:
        out = where / "out"
        assert os.stat(where).st_dev != os.stat(inp).st_dev
        waiting = _killed_after_done(inp, out, tiny_bundle)
        damaged, missing = waiting[0], waiting[1] if len(waiting) > 1 else None
        (out / damaged["dest"]).write_bytes(b"storage error: not the image any more")
        if missing:
            (out / missing["dest"]).unlink()
        rc = run_sort(sort_cmd(inp, out, tiny_bundle, True))
        assert rc == 0
        for rec in filter(None, (damaged, missing)):
            assert os.path.exists(rec["file"]) and sha256(Path(rec["file"])) == rec["sha256"], \
                f"{rec['file']} was removed although its copy in OUT is damaged or missing"
        assert set(originals.values()) <= _everything(inp, out / "benign", out / "review")
    finally:
        cleanup()


# ------------------------------------------------------------------------- (d): durability order, from the syscalls
_LINE = re.compile(r"^(\d+)\s+(.*)$")
_CALL = re.compile(r"^(\w+)\((.*)\)\s+=\s+(-?\d+|\?)")


def _strings(args: str) -> list[str]:
    return [codecs.escape_decode(s.encode("latin-1", "backslashreplace"))[0].decode("utf-8", "surrogateescape")
            for s in re.findall(r'"((?:[^"\\]|\\.)*)"', args)]


def _parse_strace(log: str) -> list[tuple[str, str, int, int]]:
    """(syscall, args, result, pid) in completion order; unfinished/resumed pairs joined."""
    pending: dict[str, str] = {}
    calls = []
    for raw in log.splitlines():
        m = _LINE.match(raw)
        if not m:
            continue
        pid, rest = m.groups()
        if rest.endswith("<unfinished ...>"):
            pending[pid] = rest[: -len("<unfinished ...>")].rstrip()
            continue
        r = re.match(r"^<\.\.\. (\w+) resumed>\s?(.*)$", rest)
        if r:
            rest = pending.pop(pid, r.group(1) + "(") + r.group(2)
        c = _CALL.match(rest)
        if c and c.group(3) != "?":
            calls.append((c.group(1), c.group(2), int(c.group(3)), int(pid)))
    return calls


class _Names:
    """Names of one inode joined by link/rename (union-find); names are never reused for other inodes in a run."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, name: str) -> str:
        while self.parent.get(name, name) != name:
            name = self.parent[name]
        return name

    def union(self, a: str, b: str) -> None:
        self.parent[self.find(a)] = self.find(b)


def _check_durability_order(log: str, out: Path, cwd: Path) -> dict[str, int]:
    """Every done record follows fsync(dest file) and fsync(dest dir) after the link, and fsync(journal) after
    its intent; every source unlink follows a durable done record of that source."""
    j = read_journal(out)
    calls = _parse_strace(log)
    fds: dict[int, str] = {}
    names = _Names()
    events = []  # (index, kind, path-or-id)
    journal = str(out / ".dermsort" / "journal.jsonl")

    def absolute(p: str) -> str:
        return p if p.startswith("/") else str(cwd / p)

    for i, (name, args, res, _pid) in enumerate(calls):
        strings = _strings(args)
        if name in ("openat", "open") and res >= 0 and strings:
            fds[res] = absolute(strings[0])
        elif name in ("dup", "dup2", "dup3") and res >= 0:
            src = int(args.split(",")[0])
            if src in fds:
                fds[res] = fds[src]
        elif name in ("fsync", "fdatasync") and res == 0:
            fd = int(args.split(",")[0])
            if fd in fds:
                events.append((i, "fsync", fds[fd]))
        elif name in ("link", "linkat", "rename", "renameat", "renameat2") and res == 0 and len(strings) >= 2:
            src, dst = (absolute(s) for s in strings[:2])
            fd_link = re.match(r"^/proc/self/fd/(\d+)$", src)
            if fd_link and int(fd_link.group(1)) in fds:
                src = fds[int(fd_link.group(1))]
            names.union(src, dst)
            events.append((i, "name", dst))
        elif name in ("unlink", "unlinkat") and res == 0 and strings:
            events.append((i, "unlink", absolute(strings[-1])))
        elif name == "write" and res > 0 and fds.get(int(args.split(",")[0])) == journal and strings:
            for line in strings[0].splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                events.append((i, rec.get("event", ""), rec.get("id", "")))

    def last(kind: str, pred, before: int) -> int | None:
        hits = [i for i, k, v in events if k == kind and i < before and pred(v)]
        return hits[-1] if hits else None

    counts = {"done": 0, "source_unlinks": 0}
    journal_fsyncs = [i for i, k, v in events if k == "fsync" and v == journal]
    done_at: dict[str, int] = {}
    for i, kind, rid in events:
        if kind != "done" or rid not in j.intents or not j.intents[rid].get("dest"):
            continue
        rec = j.intents[rid]
        dest = str(out / rec["dest"])
        linked = last("name", lambda v: v == dest, i)
        assert linked is not None, f"done record of {rec['dest']} written before the name was given"
        assert last("fsync", lambda v: names.find(v) == names.find(dest), i) is not None, \
            f"done record of {rec['dest']} written before the file's data was fsync'd"
        assert last("fsync", lambda v: v == os.path.dirname(dest), i) is not None and \
            last("fsync", lambda v: v == os.path.dirname(dest), i) > linked, \
            f"done record of {rec['dest']} written before its directory was fsync'd after the link"
        intent = last("intent", lambda v: v == rid, linked)
        assert intent is not None and any(intent < f < linked for f in journal_fsyncs), \
            f"{rec['dest']} linked before its intent was durable"
        durable = [f for f in journal_fsyncs if f > i]
        done_at[rid] = durable[0] if durable else 10 ** 9
        counts["done"] += 1
    sources = {}
    for r in j.intents.values():
        if r.get("file") and r.get("mode") == "move":
            sources[r["file"]] = r
            sources[str(capture_path(r["file"], r["id"]))] = r
    for i, kind, path in events:
        if kind != "unlink" or path not in sources:
            continue
        rec = sources[path]
        assert rec["id"] in done_at and done_at[rec["id"]] < i, \
            f"source {rec['file']} removed before the done record of {rec['dest']} was durable"
        counts["source_unlinks"] += 1
    return counts


@pytest.mark.parametrize("where", ["same-fs", "cross-fs"])
def test_move_makes_every_step_durable_before_the_next_one_strace(tiny_bundle, tmp_path, where):
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (apt-get install strace; scripts/test.sh installs it where it may): "
                    "the durability order of --move cannot be checked from its system calls")
    probe = subprocess.run([strace, "-f", "-o", os.devnull, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"strace cannot trace here (ptrace not permitted?): {probe.stderr.strip()[-200:]}")
    inp = tmp_path / "in"
    originals = copy_corpus(inp, 6)
    cleanup = None
    if where == "cross-fs":
        from test_reliability import _other_fs_mount

        base, cleanup = _other_fs_mount(tmp_path)
    else:
        base = tmp_path
    out = base / "out"
    log = tmp_path / "strace.log"
    try:
        cmd = [strace, "-f", "-qq", "-s", "1000000", "-o", str(log), "-e",
               "trace=openat,open,dup,dup2,dup3,fsync,fdatasync,write,link,linkat,rename,renameat,renameat2,"
               "unlink,unlinkat", *sort_cmd(inp, out, tiny_bundle, True, "--batch-size", "2")]
        res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        assert not tree(inp), "--move left sources behind"
        counts = _check_durability_order(log.read_text(errors="surrogateescape"), out, tmp_path)
        assert counts["done"] == len(originals) and counts["source_unlinks"] == len(originals), counts
    finally:
        if cleanup:
            cleanup()
