"""The sorter: scan -> decode (thread pool) -> batched inference -> decision -> place -> journal.

Guarantees (see docs/RELIABILITY.md and tests/test_reliability.py):
- nothing is overwritten: placement uses ``os.link`` (fails if the name exists) and a unique suffix;
- every placement is journalled as an intent before and done after it is durable, so a run killed
  at any point is finished or rolled back by the next run; partial copies live only in
  ``OUT/.dermsort/tmp`` and are never counted as sorted;
- re-runs are idempotent: a source already placed (same path and content) is skipped;
- ``benign`` only when the image passed every check and p_malignant < the artifact's threshold.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import math
import os
import socket
import stat
import threading
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .backends.base import Backend
from .errors import DermsortError, OutputError
from .journal import Journal, JournalState, write_results_csv
from .preprocess import UnreadableImage, preprocess

log = logging.getLogger(__name__)

BENIGN, REVIEW = "benign", "review"
STATE_DIR = ".dermsort"
#: files an OS or a camera leaves beside images; never images, never moved
IGNORED_NAMES = {"thumbs.db", "desktop.ini", ".ds_store"}


@dataclass
class SortOptions:
    out: Path
    move: bool = False
    recursive: bool = False
    dry_run: bool = False
    #: overrides the artifact's validated threshold (recorded in the journal)
    threshold: float | None = None
    batch_size: int = 16
    workers: int | None = None


@dataclass
class Candidate:
    path: Path
    size: int
    mtime_ns: int


@dataclass
class Decoded:
    cand: Candidate
    sha256: str = ""
    data: bytes | None = None
    tensor: np.ndarray | None = None
    concerns: list[str] = field(default_factory=list)
    error: str = ""
    #: the bytes could not be read at all (permission, vanished): nothing can be copied
    unreadable: bool = False


@dataclass
class SortSummary:
    benign: int = 0
    review: int = 0
    skipped_already_sorted: int = 0
    #: could not be placed (e.g. unreadable in copy mode); left where they are, listed here
    left_in_place: list[dict[str, str]] = field(default_factory=list)
    ignored: list[dict[str, str]] = field(default_factory=list)
    recovered: int = 0
    seconds: float = 0.0
    backend: dict[str, Any] = field(default_factory=dict)
    threshold: float = 0.0
    decisions: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False

    @property
    def sorted(self) -> int:
        return self.benign + self.review

    @property
    def work_reduction(self) -> float:
        return self.benign / self.sorted if self.sorted else 0.0

    @property
    def images_per_s(self) -> float:
        return self.sorted / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"benign": self.benign, "review": self.review, "sorted": self.sorted,
                "skipped_already_sorted": self.skipped_already_sorted, "left_in_place": self.left_in_place,
                "ignored": self.ignored, "recovered_placements": self.recovered,
                "work_reduction": round(self.work_reduction, 4), "seconds": round(self.seconds, 3),
                "images_per_s": round(self.images_per_s, 2), "backend": self.backend, "threshold": self.threshold,
                "interrupted": self.interrupted}


def check_folders(input_dir: Path, out: Path) -> tuple[Path, Path]:
    """Resolve and validate the input and output folders; one-line errors for the CLI."""
    if not input_dir.exists():
        raise DermsortError(f"input folder not found: {input_dir}")
    if not input_dir.is_dir():
        raise DermsortError(f"input is not a folder: {input_dir}")
    src, dst = input_dir.resolve(), out.resolve()
    if dst == src or src in dst.parents:
        raise OutputError(f"output folder {out} is inside the input folder {input_dir}; choose an output outside it")
    if dst in src.parents:
        raise OutputError(f"input folder {input_dir} is inside the output folder {out}; choose another output")
    return src, dst


def default_out(input_dir: Path) -> Path:
    resolved = input_dir.resolve()
    return resolved.parent / f"{resolved.name}-sorted"


def scan(root: Path, recursive: bool, ignored: list[dict[str, str]] | None = None) -> list[Candidate]:
    """Regular files under ``root`` in a stable order. Symlinks are never followed."""
    found: list[Candidate] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            if ignored is not None:
                ignored.append({"file": str(folder), "reason": f"folder not readable ({exc.strerror})"})
            continue
        for entry in entries:
            if entry.name.startswith(".") or entry.name.lower() in IGNORED_NAMES:
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode):
                if ignored is not None:
                    ignored.append({"file": entry.path, "reason": "symbolic link (not followed)"})
            elif stat.S_ISDIR(st.st_mode):
                if recursive:
                    stack.append(Path(entry.path))
            elif stat.S_ISREG(st.st_mode):
                found.append(Candidate(Path(entry.path), st.st_size, st.st_mtime_ns))
            elif ignored is not None:
                ignored.append({"file": entry.path, "reason": "not a regular file"})
    found.sort(key=lambda c: str(c.path))
    return found


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Sorter:
    """Sorts one input folder into ``options.out`` with one loaded backend."""

    def __init__(self, input_dir: Path, options: SortOptions, backend: Backend,
                 stop: threading.Event | None = None):
        self.input_dir, self.out = check_folders(Path(input_dir), Path(options.out))
        self.options = options
        self.backend = backend
        self.metadata = backend.metadata
        self.threshold = float(options.threshold if options.threshold is not None else backend.artifact.threshold)
        if not 0.0 < self.threshold <= 1.0:
            raise DermsortError(f"threshold {self.threshold} is outside (0, 1]")
        self.stop = stop or threading.Event()
        self.state_dir = self.out / STATE_DIR
        self.tmp_dir = self.state_dir / "tmp"
        self.journal = Journal(self.state_dir / "journal.jsonl")
        self.state = JournalState()
        self._lock_fd: int | None = None
        self.run_id = uuid.uuid4().hex[:12]
        self._same_fs: bool | None = None
        self._malignant_idx = self.metadata.malignant_indices()
        self._claimed: set[str] | None = None

    # ------------------------------------------------------------------ setup / recovery
    def open(self) -> int:
        """Create the output, take the lock, and finish or roll back what a killed run left. Returns #recovered."""
        if self.options.dry_run:
            self.state = self.journal.read() if self.journal.path.exists() else JournalState()
            return 0
        try:
            for sub in (BENIGN, REVIEW):
                (self.out / sub).mkdir(parents=True, exist_ok=True)
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            probe = self.state_dir / f".write-test-{os.getpid()}"
            probe.write_bytes(b"ok")
            probe.unlink()
        except PermissionError:
            raise OutputError(f"no write permission for output folder {self.out}") from None
        except OSError as exc:
            raise self._output_error(exc, "preparing") from None
        self._lock_fd = os.open(self.state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(f"another dermsort is already sorting into {self.out}") from None
        self.state = self.journal.read()
        self.journal.open()
        return self._recover()

    def close(self) -> None:
        self.journal.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _recover(self) -> int:
        """Finish or roll back placements a killed run left between intent and done."""
        finished, aborted = [], []
        for rec in self.state.pending():
            dest = self.out / rec["dest"] if rec.get("dest") else None
            if dest is not None and dest.is_file() and _sha256_path(dest) == rec["sha256"]:
                finished.append({"event": "done", "id": rec["id"], "recovered": True})
            else:
                aborted.append({"event": "abort", "id": rec["id"], "why": "placement did not complete"})
        self.journal.append(finished + aborted)
        for rec in finished:
            self.state.done.add(rec["id"])
            self.state.by_source[self.state.intents[rec["id"]]["file"]] = rec["id"]
        for rec in aborted:
            self.state.aborted.add(rec["id"])
        # partial copies from a kill: the source is still where it was (sources go only after done)
        for part in self.tmp_dir.glob("*.part"):
            part.unlink(missing_ok=True)
        return len(finished)

    # ------------------------------------------------------------------ main loop
    def run(self, files: list[Candidate] | None = None,
            progress: Callable[[int], None] | None = None) -> SortSummary:
        summary = SortSummary(threshold=self.threshold, backend=self.backend.describe())
        start = time.perf_counter()
        if files is None:
            files = scan(self.input_dir, self.options.recursive, summary.ignored)
        todo = []
        for cand in files:
            if self._already_sorted(cand):
                summary.skipped_already_sorted += 1
                if progress:
                    progress(1)
            else:
                todo.append(cand)
        batch: list[Decoded] = []
        try:
            for item in self._decode_stream(todo):
                batch.append(item)
                if len(batch) >= self.options.batch_size:
                    self._process(batch, summary, progress)
                    batch = []
                if self.stop.is_set():
                    summary.interrupted = True
                    break
            if batch:
                self._process(batch, summary, progress)
        finally:
            summary.seconds = time.perf_counter() - start
            if not self.options.dry_run and self.journal._fh is not None:
                try:
                    write_results_csv(self.state, self.out / "results.csv")
                except OSError as exc:
                    log.warning("could not write results.csv: %s", exc)
        return summary

    def _already_sorted(self, cand: Candidate) -> bool:
        rid = self.state.by_source.get(str(cand.path))
        if rid is None:
            return False
        rec = self.state.intents[rid]
        if (rec.get("size"), rec.get("mtime_ns")) != (cand.size, cand.mtime_ns):
            try:
                if _sha256_path(cand.path) != rec["sha256"]:
                    return False  # new content under an old name: sort it again (it gets its own name)
            except OSError:
                return False
        if self.options.move and not self.options.dry_run:
            self._finish_move(rec, cand.path)
        return True

    def _finish_move(self, rec: dict[str, Any], source: Path) -> None:
        """A move whose done record is durable but whose source was not yet removed (killed in between)."""
        dest = self.out / rec["dest"]
        if dest.is_file() and _sha256_path(dest) == rec["sha256"] == _sha256_path(source):
            source.unlink()
            self.journal.append([{"event": "source_removed", "id": rec["id"]}], sync=False)

    def _decode_stream(self, todo: list[Candidate]) -> Iterator[Decoded]:
        """Read + hash + decode in a thread pool with bounded look-ahead (memory stays flat)."""
        workers = self.options.workers or max(1, min(8, (os.cpu_count() or 1)))
        ahead = max(2 * self.options.batch_size, 2 * workers)
        spec = self.metadata.preprocess
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
            pending: deque = deque()
            it = iter(todo)
            for cand in it:
                pending.append(pool.submit(_decode_one, cand, spec))
                if len(pending) >= ahead:
                    break
            while pending:
                yield pending.popleft().result()
                if self.stop.is_set():
                    for fut in pending:
                        fut.cancel()
                    return
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(pool.submit(_decode_one, nxt, spec))

    def _process(self, batch: list[Decoded], summary: SortSummary, progress: Callable[[int], None] | None) -> None:
        good = [d for d in batch if d.tensor is not None]
        p_malignant: dict[int, float] = {}
        if good:
            probs = self.backend.predict(np.stack([d.tensor for d in good]))
            pm = probs[:, self._malignant_idx].sum(axis=1)
            for d, p in zip(good, pm):
                p_malignant[id(d)] = float(p)
        records = []
        for d in batch:
            p = p_malignant.get(id(d))
            decision, reason = self._decide(d, p)
            records.append((d, self._record(d, decision, reason, p)))
        self._place(records, summary)
        if progress:
            progress(len(batch))

    def _decide(self, d: Decoded, p: float | None) -> tuple[str, str]:
        if d.error:
            return REVIEW, d.error
        if p is None or not math.isfinite(p) or not -1e-4 <= p <= 1.0 + 1e-4:
            return REVIEW, f"model output out of range ({p})"
        if d.concerns:
            return REVIEW, "; ".join(d.concerns)
        if p < self.threshold:
            return BENIGN, f"p_malignant {p:.4f} < threshold {self.threshold:.4f}"
        return REVIEW, f"p_malignant {p:.4f} >= threshold {self.threshold:.4f}"

    def _record(self, d: Decoded, decision: str, reason: str, p: float | None) -> dict[str, Any]:
        info = self.backend.describe()
        return {"event": "intent", "id": uuid.uuid4().hex, "file": str(d.cand.path),
                "relpath": os.path.relpath(d.cand.path, self.input_dir), "size": d.cand.size,
                "mtime_ns": d.cand.mtime_ns, "sha256": d.sha256, "decision": decision,
                "p_malignant": None if p is None else round(p, 6), "threshold": self.threshold,
                "threshold_overridden": self.options.threshold is not None,
                "backend": info.get("backend"), "artifact": info.get("artifact"), "precision": info.get("precision"),
                "model_id": self.metadata.model_id, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "reason": reason, "mode": "move" if self.options.move else "copy", "run_id": self.run_id,
                "host": socket.gethostname(), "dest": ""}

    # ------------------------------------------------------------------ placement
    def _place(self, records: list[tuple[Decoded, dict[str, Any]]], summary: SortSummary) -> None:
        if self.options.dry_run:
            for d, rec in records:
                self._count(rec, summary)
            return
        try:
            self._place_batch(records, summary)
        except OutputError:
            raise
        except OSError as exc:
            raise self._output_error(exc, "sorting") from None

    def _place_batch(self, records: list[tuple[Decoded, dict[str, Any]]], summary: SortSummary) -> None:
        staged: list[tuple[Decoded, dict[str, Any], Path | None]] = []
        for d, rec in records:
            if d.unreadable and not self.options.move:
                summary.left_in_place.append({"file": rec["file"], "reason": rec["reason"]})
                continue
            tmp = None
            if not self._can_link_source(d):
                # copy mode, or a move across file systems: stage a verified copy inside OUT first
                if d.data is None:
                    summary.left_in_place.append({"file": rec["file"], "reason": rec["reason"] + " (cannot copy)"})
                    continue
                tmp = self.tmp_dir / f"{rec['id']}.part"
                _write_durable(tmp, d.data)
                if _sha256_path(tmp, drop_cache=True) != d.sha256:
                    tmp.unlink(missing_ok=True)
                    raise OutputError(f"copy of {d.cand.path} did not verify (storage error?); source left in place")
            rec["dest"] = self._unique_dest(rec["decision"], d.cand.path.name)
            staged.append((d, rec, tmp))
        if not staged:
            return
        # 1. intents are durable before any file appears in benign/ or review/
        self.journal.append([rec for _, rec, _ in staged])
        for _, rec, _ in staged:
            self.state.intents[rec["id"]] = rec
        placed = []
        for d, rec, tmp in staged:
            dest = self.out / rec["dest"]
            source = tmp if tmp is not None else d.cand.path
            if not self._link_no_replace(source, dest):
                # the name appeared since we chose it (another writer): roll back this one, retried next run
                self.journal.append([{"event": "abort", "id": rec["id"], "why": "destination name taken"}])
                self.state.aborted.add(rec["id"])
                continue
            placed.append((d, rec, tmp))
        # 2. the new names are durable before the done records
        for sub in (BENIGN, REVIEW):
            _fsync_dir(self.out / sub)
        self.journal.append([{"event": "done", "id": rec["id"]} for _, rec, _ in placed])
        for d, rec, tmp in placed:
            self.state.done.add(rec["id"])
            self.state.by_source[rec["file"]] = rec["id"]
            self._count(rec, summary)
        # 3. only now do the staging copies and (for --move) the sources go
        removed = []
        for d, rec, tmp in placed:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            if self.options.move:
                try:
                    st = os.stat(d.cand.path, follow_symlinks=False)
                    if (st.st_size, st.st_mtime_ns) == (d.cand.size, d.cand.mtime_ns):
                        os.unlink(d.cand.path)
                        removed.append({"event": "source_removed", "id": rec["id"]})
                    else:
                        log.warning("%s changed while being sorted; left in place (it will be sorted again)", d.cand.path)
                except FileNotFoundError:
                    pass
        self.journal.append(removed, sync=False)

    def _can_link_source(self, d: Decoded) -> bool:
        if not self.options.move:
            return False
        if self._same_fs is None:
            self._same_fs = os.stat(self.input_dir).st_dev == os.stat(self.out).st_dev
        return self._same_fs

    def _link_no_replace(self, source: Path, dest: Path) -> bool:
        try:
            os.link(source, dest)
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
        # file systems without hard links (exFAT, some SMB shares): we hold the output lock, so
        # check-then-rename cannot race another dermsort
        if dest.exists():
            return False
        if source.parent == self.tmp_dir:
            os.rename(source, dest)
        else:
            _write_durable(dest, source.read_bytes())
        return True

    def _unique_dest(self, decision: str, name: str) -> str:
        stem, ext = os.path.splitext(name.replace("\n", "_").replace("\r", "_"))
        if self._claimed is None:
            self._claimed = self.state.claimed_dests()
        claimed = self._claimed
        n = 0
        while True:
            cand = f"{decision}/{stem}{ext}" if n == 0 else f"{decision}/{stem}__{n}{ext}"
            if cand not in claimed and not os.path.lexists(self.out / cand):
                claimed.add(cand)  # names chosen earlier in this batch are taken too
                return cand
            n += 1

    def _count(self, rec: dict[str, Any], summary: SortSummary) -> None:
        if rec["decision"] == BENIGN:
            summary.benign += 1
        else:
            summary.review += 1
        summary.decisions.append({k: rec.get(k) for k in ("file", "dest", "decision", "p_malignant", "reason", "sha256")})

    def _output_error(self, exc: OSError, when: str) -> OutputError:
        if exc.errno == errno.ENOSPC:
            return OutputError(f"disk full while {when} into {self.out}; nothing was lost: sorted images are recorded "
                               "in the journal and the rest are still in the input folder; free space and re-run")
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return OutputError(f"no write permission for output folder {self.out} ({exc.strerror})")
        if exc.errno == errno.ENOENT and not self.out.exists():
            return OutputError(f"output folder {self.out} disappeared while {when}; nothing was lost: "
                               "unsorted images are still in the input folder; re-run")
        return OutputError(f"cannot write to {self.out} while {when}: {exc.strerror or exc} ({exc.filename})")


def _decode_one(cand: Candidate, spec: Any) -> Decoded:
    d = Decoded(cand)
    try:
        with open(cand.path, "rb") as fh:
            d.data = fh.read()
    except PermissionError:
        d.error, d.unreadable = "unreadable: permission denied", True
        return d
    except OSError as exc:
        d.error, d.unreadable = f"unreadable: {exc.strerror or exc}", True
        return d
    d.sha256 = hashlib.sha256(d.data).hexdigest()
    if len(d.data) != cand.size:
        # still being written, or changed since the scan: decide on what we hashed, with a note
        cand.size = len(d.data)
    try:
        d.tensor, info = preprocess(d.data, spec, cand.path.name)
        d.concerns = info.concerns
    except UnreadableImage as exc:
        d.error = str(exc)
    except Exception as exc:  # never let one file stop the run
        d.error = f"could not decode ({type(exc).__name__}: {str(exc)[:80]})"
    return d


def _write_durable(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _sha256_path(path: Path, drop_cache: bool = False) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        if drop_cache and hasattr(os, "posix_fadvise"):
            # read the copy back from the disk, not from the page cache we just wrote
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
