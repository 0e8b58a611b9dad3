"""The sorter: scan -> decode (thread pool) -> batched inference -> decision -> place -> journal.

Guarantees (see docs/RELIABILITY.md; tested in tests/test_reliability.py, test_faults.py, test_bad_input.py):
- nothing is overwritten: placement uses ``os.link`` (fails if the name exists) and a unique suffix;
- every placement is journalled as an intent before and done after it is durable, so a run killed
  at any point is finished or rolled back by the next run; partial copies live only in
  ``OUT/.dermsort/tmp`` and are never counted as sorted;
- a source is removed (``--move``) only after its done record is durable and its destination was
  seen in place; across file systems only after the copy was fsync'd and verified by sha256;
- re-runs are idempotent: a source already placed (same path and content) is skipped;
- ``benign`` only when the image passed every check and p_malignant < the artifact's threshold;
- one bad input file never stops the run: it goes to review/ with a reason, or (when it cannot be
  read or is not a regular file any more) stays where it is and is listed.
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
from .diagnosis import top_diagnoses
from .errors import DermsortError, OutputError
from .journal import Journal, JournalState, fault_point, write_results_csv
from .preprocess import UnreadableImage, preprocess
from .thumbs import encode_thumbnail, write_thumbnail

log = logging.getLogger(__name__)

BENIGN, REVIEW = "benign", "review"
STATE_DIR = ".dermsort"
#: files an OS or a camera leaves beside images; never images, never moved
IGNORED_NAMES = {"thumbs.db", "desktop.ini", ".ds_store"}
#: files up to this size are read once into memory (hash, decode and copy from the same bytes);
#: larger ones are streamed, so one huge file cannot exhaust memory
MAX_IN_MEMORY = 16 << 20
#: longest file name (bytes) on every common file system
NAME_MAX = 255
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


@dataclass
class SortOptions:
    out: Path
    move: bool = False
    recursive: bool = False
    dry_run: bool = False
    #: overrides the artifact's validated threshold (recorded in the journal)
    threshold: float | None = None
    #: images per inference call; 8 keeps peak RSS of the default model (which scores each image and its
    #: mirror image, 2x rows) near what batch 16 cost a single-view model (docs/BENCHMARKS.md)
    batch_size: int = 8
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
    #: the file's bytes (None for files larger than MAX_IN_MEMORY: those are streamed)
    data: bytes | None = None
    tensor: np.ndarray | None = None
    concerns: list[str] = field(default_factory=list)
    error: str = ""
    #: the bytes could not be read at all (permission, I/O error): nothing can be copied
    unreadable: bool = False
    #: not placed at all, left where it is with this reason (became a symlink, vanished, still being written)
    skip: str = ""
    dev: int | None = None
    atime_ns: int = 0
    #: the review page's thumbnail (JPEG bytes) made from the decoded pixels; written after placement
    thumb: bytes | None = None


class _NotLinkable(Exception):
    """The source cannot be hard-linked into the output (other file system, no hard links): copy it."""


@dataclass
class SortSummary:
    benign: int = 0
    review: int = 0
    skipped_already_sorted: int = 0
    #: could not be placed (e.g. unreadable in copy mode); left where they are, listed here
    left_in_place: list[dict[str, str]] = field(default_factory=list)
    ignored: list[dict[str, str]] = field(default_factory=list)
    #: --move: sorted (a verified copy is in the output) but the source could not be removed
    sources_kept: list[dict[str, str]] = field(default_factory=list)
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
                "ignored": self.ignored, "sources_kept": self.sources_kept, "recovered_placements": self.recovered,
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
        self._out_dev: int | None = None
        #: st_dev -> whether sources on it can be hard-linked into the output (learned on EXDEV/EPERM)
        self._linkable: dict[int, bool] = {}
        self._malignant_idx = self.metadata.malignant_indices()
        self._claimed: set[str] | None = None
        #: journal size when results.csv was last brought up to date (watch mode runs every few seconds)
        self._csv_at: int | None = None

    # ------------------------------------------------------------------ setup / recovery
    def open(self) -> int:
        """Create the output, take the lock, and finish or roll back what a killed run left. Returns #recovered."""
        if self.options.dry_run:
            # read-only: a torn tail is left for the lock holder to cut
            self.state = self.journal.read(repair=False) if self.journal.path.exists() else JournalState()
            return 0
        try:
            for sub in (BENIGN, REVIEW):
                (self.out / sub).mkdir(parents=True, exist_ok=True)
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            probe = self.state_dir / f".write-test-{os.getpid()}"
            probe.write_bytes(b"ok")
            probe.unlink(missing_ok=True)
        except PermissionError:
            raise OutputError(f"no write permission for output folder {self.out}") from None
        except OSError as exc:
            raise self._output_error(exc, "preparing") from None
        self._lock_fd = os.open(self.state_dir / "lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise OutputError(f"another dermsort is already sorting into {self.out}") from None
        try:
            self.state = self.journal.read()
            self.journal.open()
            for sub in ("", BENIGN, REVIEW):  # the folders' names are durable before anything is placed in them
                _fsync_dir(self.out / sub)
            recovered = self._recover()
            for stale in [*self.state_dir.glob(".write-test-*"), self.out / ".results.csv.tmp"]:
                stale.unlink(missing_ok=True)  # left by a kill
        except OSError as exc:
            raise self._output_error(exc, "recovering an interrupted run") from None
        return recovered

    def close(self) -> None:
        self.journal.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _recover(self) -> int:
        """Finish or roll back placements a killed run left between intent and done."""
        finished, aborted = [], []
        for rec in self.state.pending():
            if self._placement_complete(rec):
                finished.append({"event": "done", "id": rec["id"], "recovered": True})
            else:
                self._unlink_own_partial_link(rec)
                aborted.append({"event": "abort", "id": rec["id"], "why": "placement did not complete"})
        self.journal.append(finished + aborted)
        fault_point("recovered")
        for rec in finished:
            self.state.done.add(rec["id"])
            self.state.by_source[self.state.intents[rec["id"]]["file"]] = rec["id"]
        for rec in aborted:
            self.state.aborted.add(rec["id"])
        # partial copies from a kill: the source is still where it was (sources go only after done)
        for part in self.tmp_dir.glob("*.part"):
            part.unlink(missing_ok=True)
        return len(finished)

    def _placement_complete(self, rec: dict[str, Any]) -> bool:
        if not rec.get("dest"):
            return False
        try:
            st = os.stat(self.out / rec["dest"], follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                return False
            if not rec.get("sha256"):  # an unreadable file moved by hard link: the source is the same inode
                return os.path.samestat(st, os.stat(rec["file"], follow_symlinks=False))
            return _sha256_path(self.out / rec["dest"]) == rec["sha256"]
        except OSError:
            return False

    def _unlink_own_partial_link(self, rec: dict[str, Any]) -> None:
        """A --move link whose source changed before the check: the dest is our second name of the source."""
        if not rec.get("dest") or rec.get("mode") != "move":
            return
        dest = self.out / rec["dest"]
        try:
            if os.path.samestat(os.stat(dest, follow_symlinks=False), os.stat(rec["file"], follow_symlinks=False)):
                os.unlink(dest)
        except OSError:
            pass

    # ------------------------------------------------------------------ main loop
    def run(self, files: list[Candidate] | None = None,
            progress: Callable[[int], None] | None = None) -> SortSummary:
        summary = SortSummary(threshold=self.threshold, backend=self.backend.describe())
        start = time.perf_counter()
        if files is None:
            files = scan(self.input_dir, self.options.recursive, summary.ignored)
        failed = True
        try:
            todo = []
            for cand in files:
                if self._already_sorted(cand, summary):
                    summary.skipped_already_sorted += 1
                    if progress:
                        progress(1)
                else:
                    todo.append(cand)
            batch: list[Decoded] = []
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
            failed = False
        finally:
            summary.seconds = time.perf_counter() - start
            if not self.options.dry_run and self.journal.is_open:
                try:
                    size = self.journal.size()
                    if size != self._csv_at:
                        write_results_csv(self.state, self.out / "results.csv")
                        self._csv_at = size
                except OSError as exc:
                    if not failed:  # when the run fails anyway, its own one-line error says why
                        log.warning("could not write results.csv: %s", exc)
        return summary

    def _already_sorted(self, cand: Candidate, summary: SortSummary) -> bool:
        rid = self.state.by_source.get(str(cand.path))
        if rid is None:
            return False
        rec = self.state.intents[rid]
        if (rec.get("size"), rec.get("mtime_ns")) != (cand.size, cand.mtime_ns):
            try:
                if not rec.get("sha256") or _sha256_path(cand.path) != rec["sha256"]:
                    return False  # new content under an old name: sort it again (it gets its own name)
            except OSError:
                return False
        if self.options.move and not self.options.dry_run:
            self._finish_move(rec, cand.path, summary)
        return True

    def _finish_move(self, rec: dict[str, Any], source: Path, summary: SortSummary) -> None:
        """A move whose done record is durable but whose source was not yet removed (killed in between)."""
        dest = self.out / rec["dest"]
        try:
            dst, src = os.stat(dest, follow_symlinks=False), os.stat(source, follow_symlinks=False)
            if os.path.samestat(dst, src):
                ok = True
            else:
                ok = bool(rec.get("sha256")) and _sha256_path(dest) == rec["sha256"] == _sha256_path(source)
        except OSError:
            ok = False
        if not ok:
            summary.sources_kept.append({"file": str(source), "reason": f"sorted earlier, but {rec['dest']} is missing "
                                         "or differs from it, so it was not removed"})
            return
        try:
            os.unlink(source)
        except OSError as exc:
            summary.sources_kept.append({"file": str(source), "reason": f"could not remove it ({exc.strerror})"})
            return
        fault_point("unlink")
        self._append([{"event": "source_removed", "id": rec["id"]}], sync=False)

    def _decode_stream(self, todo: list[Candidate]) -> Iterator[Decoded]:
        """Read + hash + decode in a thread pool with bounded look-ahead (memory stays flat)."""
        workers = self.options.workers or max(1, min(8, (os.cpu_count() or 1)))
        ahead = max(2 * self.options.batch_size, 2 * workers)
        spec = self.metadata.preprocess
        thumbs = None if self.options.dry_run else self.state_dir / "thumbs"  # the review page's thumbnails
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
            pending: deque = deque()
            it = iter(todo)
            for cand in it:
                pending.append(pool.submit(_decode_one, cand, spec, thumbs))
                if len(pending) >= ahead:
                    break
            try:
                while pending:
                    yield pending.popleft().result()
                    if self.stop.is_set():
                        return
                    nxt = next(it, None)
                    if nxt is not None:
                        pending.append(pool.submit(_decode_one, nxt, spec, thumbs))
            finally:
                for fut in pending:  # an error or a stop: do not decode what will not be placed
                    fut.cancel()

    def _process(self, batch: list[Decoded], summary: SortSummary, progress: Callable[[int], None] | None) -> None:
        good = [d for d in batch if d.tensor is not None and not d.skip]
        p_malignant: dict[int, float] = {}
        top_dx: dict[int, tuple[str, float] | tuple[None, None]] = {}
        if good:
            probs = self.backend.predict(np.stack([d.tensor for d in good]))
            pm = probs[:, self._malignant_idx].sum(axis=1)
            # display only: the decision below rests on p_malignant alone
            tops = top_diagnoses(probs, self.metadata.classes)
            for d, p, top in zip(good, pm, tops):
                p_malignant[id(d)] = float(p)
                top_dx[id(d)] = top
        records = []
        for d in batch:
            d.tensor = None  # the pixels are not needed any more
            p = p_malignant.get(id(d))
            decision, reason = self._decide(d, p)
            records.append((d, self._record(d, decision, reason, p, top_dx.get(id(d), (None, None)))))
        self._place(records, summary)
        for d in batch:  # the review page's thumbnails: written by this thread, after the batch is placed
            if d.thumb:
                write_thumbnail(self.state_dir / "thumbs", d.sha256, d.thumb)
                d.thumb = None
        if progress:
            progress(len(batch))

    def _decide(self, d: Decoded, p: float | None) -> tuple[str, str]:
        if d.skip:
            return REVIEW, d.skip
        if d.error:
            return REVIEW, d.error
        if p is None or not math.isfinite(p) or not -1e-4 <= p <= 1.0 + 1e-4:
            return REVIEW, f"model output out of range ({p})"
        if d.concerns:
            return REVIEW, "; ".join(d.concerns)
        if p < self.threshold:
            return BENIGN, f"p_malignant {p:.4f} < threshold {self.threshold:.4f}"
        return REVIEW, f"p_malignant {p:.4f} >= threshold {self.threshold:.4f}"

    def _record(self, d: Decoded, decision: str, reason: str, p: float | None,
                top: tuple[str, float] | tuple[None, None] = (None, None)) -> dict[str, Any]:
        info = self.backend.describe()
        return {"event": "intent", "id": uuid.uuid4().hex, "file": str(d.cand.path),
                "relpath": os.path.relpath(d.cand.path, self.input_dir), "size": d.cand.size,
                "mtime_ns": d.cand.mtime_ns, "sha256": d.sha256, "decision": decision,
                "p_malignant": None if p is None else round(p, 6), "threshold": self.threshold,
                "threshold_overridden": self.options.threshold is not None,
                "backend": info.get("backend"), "artifact": info.get("artifact"), "precision": info.get("precision"),
                "model_id": self.metadata.model_id, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "reason": reason, "mode": "move" if self.options.move else "copy", "run_id": self.run_id,
                "host": socket.gethostname(), "dest": "", "top_dx": top[0], "top_dx_p": top[1]}

    # ------------------------------------------------------------------ placement
    def _place(self, records: list[tuple[Decoded, dict[str, Any]]], summary: SortSummary) -> None:
        if self.options.dry_run:
            for d, rec in records:
                if d.skip or (d.unreadable and not self.options.move):
                    summary.left_in_place.append({"file": rec["file"], "reason": rec["reason"]})
                else:
                    self._count(rec, summary)
            return
        try:
            self._place_batch(records, summary)
        except OutputError:
            raise
        except OSError as exc:
            raise self._output_error(exc, "sorting") from None

    def _append(self, records: list[dict[str, Any]], sync: bool = True) -> None:
        self.journal.append(records, sync=sync)

    def _place_batch(self, records: list[tuple[Decoded, dict[str, Any]]], summary: SortSummary) -> None:
        staged: list[tuple[Decoded, dict[str, Any], Path | None]] = []
        for d, rec in records:
            if d.skip:
                summary.left_in_place.append({"file": rec["file"], "reason": d.skip})
                continue
            linkable = self._can_link_source(d)
            if d.unreadable and not linkable:
                summary.left_in_place.append({"file": rec["file"], "reason": rec["reason"] + " (cannot copy)"})
                continue
            tmp = None
            if not linkable:
                # copy mode, or a move across file systems: stage a verified copy inside OUT first
                tmp = self._stage_copy(d, rec)
                if tmp is None:
                    summary.left_in_place.append({"file": rec["file"], "reason": "changed or vanished while being "
                                                  "sorted; left for a later run"})
                    continue
            rec["dest"] = self._unique_dest(rec["decision"], d.cand.path.name)
            staged.append((d, rec, tmp))
        if not staged:
            return
        # 1. intents are durable before any file appears in benign/ or review/
        self._append([rec for _, rec, _ in staged])
        fault_point("intent")
        for _, rec, _ in staged:
            self.state.intents[rec["id"]] = rec
        placed = []
        for d, rec, tmp in staged:
            result = self._link_into_place(d, rec, tmp, summary)
            if result is not None:
                placed.append((d, *result))
        # 2. the new names are durable before the done records
        for sub in (BENIGN, REVIEW):
            _fsync_dir(self.out / sub)
        fault_point("dir_fsync")
        self._append([{"event": "done", "id": rec["id"]} for _, rec, _ in placed])
        fault_point("done")
        for d, rec, tmp in placed:
            self.state.done.add(rec["id"])
            self.state.by_source[rec["file"]] = rec["id"]
            self._count(rec, summary)
        if placed and not self.journal.still_linked():
            raise OutputError(f"the journal in {self.out} disappeared while sorting (output folder removed or "
                              "unmounted?); no source was removed; re-run")
        # 3. only now do the staging copies and (for --move) the sources go
        removed = []
        for d, rec, tmp in placed:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            if self.options.move and self._remove_source(d, rec, summary):
                removed.append({"event": "source_removed", "id": rec["id"]})
        self._append(removed, sync=False)

    def _stage_copy(self, d: Decoded, rec: dict[str, Any]) -> Path | None:
        """Write a durable, verified copy of the source to OUT/.dermsort/tmp. None: the source changed or vanished."""
        if d.unreadable:
            return None
        tmp = self.tmp_dir / f"{rec['id']}.part"
        if d.data is not None:
            _write_durable(tmp, d.data, d.atime_ns, d.cand.mtime_ns)
        else:
            written = _copy_durable(d.cand.path, tmp, d.atime_ns, d.cand.mtime_ns)
            if written != d.sha256:
                tmp.unlink(missing_ok=True)
                return None
        fault_point("tmp_written")
        if _sha256_path(tmp, drop_cache=True) != d.sha256:
            tmp.unlink(missing_ok=True)
            raise OutputError(f"copy of {d.cand.path} did not verify (storage error?); source left in place")
        return tmp

    def _link_into_place(self, d: Decoded, rec: dict[str, Any], tmp: Path | None,
                         summary: SortSummary) -> tuple[dict[str, Any], Path | None] | None:
        """Give the staged copy (or, for a same-fs move, the source) its name in benign/ or review/.

        Returns the (possibly re-issued) record and the staging file, or None if it was rolled back.
        """
        for _ in range(100):
            dest = self.out / rec["dest"]
            try:
                linked = self._link_no_replace(tmp if tmp is not None else d.cand.path, dest)
            except _NotLinkable:
                if d.dev is not None:
                    self._linkable[d.dev] = False
                tmp = self._stage_copy(d, rec)
                if tmp is None:
                    self._abort(rec, "source changed or unreadable")
                    summary.left_in_place.append({"file": rec["file"], "reason": "changed or unreadable while being "
                                                  "sorted; left for a later run"})
                    return None
                continue
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.EILSEQ, errno.ENAMETOOLONG):
                    raise
                # a name this output file system refuses (FAT: ':' '?' '*'...): a plain ASCII name instead
                rec = self._reissue(rec, d, "destination name not allowed here", safe=True)
                continue
            if not linked:
                # the name appeared since we chose it (put there by hand, a case-insensitive file system)
                rec = self._reissue(rec, d, "destination name taken")
                continue
            fault_point("link")
            if tmp is None and not self._same_content(d, dest):
                os.unlink(dest)  # our own second name of a source that changed: roll back
                self._abort(rec, "source changed while being moved")
                summary.left_in_place.append({"file": rec["file"], "reason": "changed while being sorted; left "
                                              "for a later run"})
                return None
            return rec, tmp
        self._abort(rec, "no free destination name")
        summary.left_in_place.append({"file": rec["file"], "reason": "no free name in the output"})
        return None

    def _abort(self, rec: dict[str, Any], why: str) -> None:
        self._append([{"event": "abort", "id": rec["id"], "why": why}])
        self.state.aborted.add(rec["id"])

    def _reissue(self, rec: dict[str, Any], d: Decoded, why: str, safe: bool = False) -> dict[str, Any]:
        """Abort ``rec`` and journal the same placement under a fresh destination name."""
        self._abort(rec, why)
        name = d.cand.path.name
        if safe:
            name = "".join(c if (c.isascii() and (c.isalnum() or c in "-_. ")) else "_" for c in name)
        new = dict(rec, id=uuid.uuid4().hex, dest=self._unique_dest(rec["decision"], name))
        self._append([new])
        self.state.intents[new["id"]] = new
        return new

    def _same_content(self, d: Decoded, dest: Path) -> bool:
        st = os.stat(dest, follow_symlinks=False)
        return (st.st_size, st.st_mtime_ns) == (d.cand.size, d.cand.mtime_ns)

    def _remove_source(self, d: Decoded, rec: dict[str, Any], summary: SortSummary) -> bool:
        source, dest = d.cand.path, self.out / rec["dest"]
        try:
            st = os.stat(source, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if (st.st_size, st.st_mtime_ns) != (d.cand.size, d.cand.mtime_ns):
            log.warning("%s changed while being sorted; left in place (it will be sorted again)", source)
            summary.sources_kept.append({"file": str(source), "reason": "changed while being sorted"})
            return False
        try:
            dst = os.stat(dest, follow_symlinks=False)
        except OSError:
            dst = None
        if dst is None or dst.st_size != st.st_size:
            raise OutputError(f"{dest} vanished right after it was placed (output folder removed or unmounted?); "
                              f"{source} and the rest were left in place; re-run")
        try:
            os.unlink(source)
        except OSError as exc:  # e.g. a write-protected card: the image is sorted, the source stays
            log.warning("could not remove %s after sorting it: %s", source, exc.strerror)
            summary.sources_kept.append({"file": str(source), "reason": f"could not remove it ({exc.strerror})"})
            return False
        fault_point("unlink")
        return True

    def _can_link_source(self, d: Decoded) -> bool:
        """--move on one file system: the source itself is hard-linked into place (no copy)."""
        if not self.options.move:
            return False
        if self._out_dev is None:
            self._out_dev = os.stat(self.out).st_dev
        if d.dev is None:
            try:
                d.dev = os.stat(d.cand.path, follow_symlinks=False).st_dev
            except OSError:
                return False
        return self._linkable.get(d.dev, d.dev == self._out_dev)

    def _link_no_replace(self, source: Path, dest: Path) -> bool:
        staged = source.parent == self.tmp_dir
        try:
            os.link(source, dest, follow_symlinks=False)
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno == errno.EXDEV and not staged:
                raise _NotLinkable() from None
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
        # file systems without hard links (exFAT, some SMB shares), or not allowed to link this source
        if not staged:
            raise _NotLinkable()
        # we hold the output lock, so check-then-rename cannot race another dermsort
        if os.path.lexists(dest):
            return False
        os.rename(source, dest)
        return True

    def _unique_dest(self, decision: str, name: str) -> str:
        stem, ext = os.path.splitext(name.replace("\n", "_").replace("\r", "_"))
        if len(os.fsencode(ext)) > 16:
            stem, ext = stem + ext, ""
        if self._claimed is None:
            self._claimed = self.state.claimed_dests()
        claimed = self._claimed
        n = 0
        while True:
            suffix = "" if n == 0 else f"__{n}"
            base = stem
            while len(os.fsencode(base + suffix + ext)) > NAME_MAX:
                base = base[:-1]  # keep the name within NAME_MAX bytes, suffix included
            cand = f"{decision}/{base}{suffix}{ext}"
            if cand not in claimed and not os.path.lexists(self.out / cand):
                claimed.add(cand)  # names chosen earlier in this batch are taken too
                return cand
            n += 1

    def _count(self, rec: dict[str, Any], summary: SortSummary) -> None:
        if rec["decision"] == BENIGN:
            summary.benign += 1
        else:
            summary.review += 1
        summary.decisions.append({k: rec.get(k) for k in ("file", "dest", "decision", "p_malignant", "reason", "sha256",
                                                          "top_dx", "top_dx_p")})

    def _output_error(self, exc: OSError, when: str) -> OutputError:
        if exc.errno == errno.ENOSPC:
            return OutputError(f"disk full while {when} into {self.out}; nothing was lost: sorted images are recorded "
                               "in the journal and the rest are still in the input folder; free space and re-run")
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return OutputError(f"no write permission for output folder {self.out} ({exc.strerror})")
        if exc.errno == errno.ENOENT and not (self.out.is_dir() and self.state_dir.is_dir()):
            return OutputError(f"output folder {self.out} disappeared while {when}; nothing was lost: "
                               "unsorted images are still in the input folder; re-run")
        return OutputError(f"cannot write to {self.out} while {when}: {exc.strerror or exc} ({exc.filename})")


def _decode_one(cand: Candidate, spec: Any, thumbs: Path | None = None) -> Decoded:
    """Read (never through a symlink, never blocking on a FIFO), hash and decode one file."""
    d = Decoded(cand)
    try:
        fd = os.open(cand.path, _OPEN_FLAGS)
    except PermissionError:
        d.error, d.unreadable = "unreadable: permission denied", True
        return d
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            d.skip = "symbolic link (not followed)"
        elif exc.errno == errno.ENOENT:
            d.skip = "vanished before it could be read"
        else:
            d.error, d.unreadable = f"unreadable: {exc.strerror or exc}", True
        return d
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            d.skip = "not a regular file"
            return d
        digest = hashlib.sha256()
        chunks: list[bytes] | None = [] if st.st_size <= MAX_IN_MEMORY else None
        while block := os.read(fd, 1 << 20):
            digest.update(block)
            if chunks is not None:
                chunks.append(block)
        after = os.fstat(fd)
    except OSError as exc:  # an I/O error mid-read (a failing card)
        d.error, d.unreadable = f"unreadable: {exc.strerror or exc}", True
        return d
    finally:
        os.close(fd)
    if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
        d.skip = "changed while being read (still being written?); left for a later run"
        return d
    # the record describes exactly what was read and hashed
    cand.size, cand.mtime_ns = st.st_size, st.st_mtime_ns
    d.dev, d.atime_ns = st.st_dev, st.st_atime_ns
    d.sha256 = digest.hexdigest()
    thumb = None if thumbs is None else (lambda img: setattr(d, "thumb", encode_thumbnail(img, thumbs, d.sha256)))
    try:
        if chunks is not None:
            d.data = b"".join(chunks)
            d.tensor, info = preprocess(d.data, spec, cand.path.name, on_image=thumb)
        else:
            with os.fdopen(os.open(cand.path, _OPEN_FLAGS), "rb") as fh:
                d.tensor, info = preprocess(fh, spec, cand.path.name, on_image=thumb)
        d.concerns = info.concerns
    except UnreadableImage as exc:
        d.error = str(exc)
    except Exception as exc:  # never let one file stop the run
        d.error = f"could not decode ({type(exc).__name__}: {str(exc)[:80]})"
    return d


def _write_durable(path: Path, data: bytes, atime_ns: int = 0, mtime_ns: int = 0) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        if mtime_ns:  # keep the original's time stamp (when the image was taken / exported)
            os.utime(fh.fileno(), ns=(atime_ns or mtime_ns, mtime_ns))
        os.fsync(fh.fileno())


def _copy_durable(source: Path, target: Path, atime_ns: int = 0, mtime_ns: int = 0) -> str | None:
    """Stream ``source`` into ``target`` (fsync'd); the sha256 of what was copied, None if the source went away."""
    try:
        src = os.open(source, _OPEN_FLAGS)
    except OSError:
        return None
    digest = hashlib.sha256()
    try:
        with open(target, "wb") as fh:
            while True:
                try:
                    block = os.read(src, 1 << 20)
                except OSError:
                    return None
                if not block:
                    break
                digest.update(block)
                fh.write(block)
            fh.flush()
            if mtime_ns:
                os.utime(fh.fileno(), ns=(atime_ns or mtime_ns, mtime_ns))
            os.fsync(fh.fileno())
    finally:
        os.close(src)
    return digest.hexdigest()


def _sha256_path(path: Path, drop_cache: bool = False) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        if drop_cache and hasattr(os, "posix_fadvise"):
            # read the copy back from the disk, not from the page cache we just wrote
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
