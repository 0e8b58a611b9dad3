"""The sorter: scan -> read + decode (thread pool) -> batched inference -> decision -> place -> journal.

Each idea has its own module: finding inputs (``scan``), reading one safely (``reading``), reading ahead
and keeping one model call in flight (``batches``), giving it
its name and removing a source (``placement``, where the never-overwrite / identity-checked /
durable-before-irreversible promises live), finishing what a killed run or a damaged journal left
(``recovery``), and the low-level durable file operations (``fileops``). This module only
orchestrates them. Guarantees: docs/RELIABILITY.md.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from .backends.base import Backend
from . import batches
from .batches import Scored, decode_ahead, inference_thread
from .decision import BENIGN, REVIEW, RunFacts, decide, intent_record
from .errors import DermsortError, OutputError
from .fileops import Identity, fsync_dir, lock_exclusive, sha256_file
from .journal import Journal, JournalState
from .placement import Placer
from .reading import MAX_IN_MEMORY, Decoded, decode_one
from .records import Intent, SourceRemoved
from .recovery import claim_record, reconcile, recover_pending, unaccounted
from .results_csv import write_results_csv
from .scan import Candidate, ScanNotes, check_folders, default_out, scan
from .summary import SortSummary
from .thumbs import write_thumbnail

__all__ = ["BENIGN", "REVIEW", "STATE_DIR", "Candidate", "Decoded", "ScanNotes", "SortOptions", "SortSummary", "Sorter",
           "check_folders", "default_out", "scan", "MAX_IN_MEMORY"]

log = logging.getLogger(__name__)

STATE_DIR = ".dermsort"


@dataclass
class SortOptions:
    out: Path
    move: bool = False
    recursive: bool = False
    dry_run: bool = False
    #: overrides the artifact's validated threshold (recorded in the journal and results.csv)
    threshold: float | None = None
    #: images per inference call; 4 keeps peak RSS under 300 MB on every backend and input size measured,
    #: at no more CPU than 8 (the default model scores each image and its mirror: 2x rows; docs/BENCHMARKS.md)
    batch_size: int = 4
    workers: int | None = None
    #: an artifact the export's parity gate rejected may run only with this (every row is marked)
    allow_rejected: bool = False
    #: with ``recursive``: mirror the input's subfolders inside benign/ and review/ instead of flattening
    keep_tree: bool = False
    #: a site profile's threshold (runtime/site.py), used when ``threshold`` is None; ``site_profile`` names
    #: the profile in every record (results.csv column site_profile)
    site_threshold: float | None = None
    site_profile: str = ""


class Sorter:
    """Sorts one input folder into ``options.out`` with one loaded backend."""

    def __init__(self, input_dir: Path, options: SortOptions, backend: Backend,
                 stop: threading.Event | None = None):
        self.input_dir, self.out = check_folders(Path(input_dir), Path(options.out))
        self.options = options
        self.backend = backend
        self.metadata = backend.metadata
        self.validated_threshold = float(backend.artifact.threshold)
        chosen = options.threshold if options.threshold is not None else options.site_threshold
        self.threshold = float(chosen if chosen is not None else self.validated_threshold)
        if not 0.0 < self.threshold <= 1.0:
            raise DermsortError(f"threshold {self.threshold} is outside (0, 1]")
        #: False only when a gate-rejected artifact was explicitly allowed (engine.open_backend refuses it otherwise)
        self.artifact_accepted = not backend.artifact.rejected
        #: who vouches for the bundle ("signed by KEY-ID" / "unsigned (locally built)"), on every row
        self.signature = backend.bundle.signature.describe()
        self.stop = stop or threading.Event()
        self.state_dir = self.out / STATE_DIR
        self.tmp_dir = self.state_dir / "tmp"
        #: the journal and its state: every change goes through ``journal.record``
        self.journal = Journal(self.state_dir / "journal.jsonl")
        self._lock_fd: int | None = None
        self.run_id = uuid.uuid4().hex[:12]
        #: journal size when results.csv was last brought up to date (watch mode runs every few seconds)
        self._csv_at: int | None = None
        self.placer = Placer(self.out, self.tmp_dir, self.journal, options.move, keep_tree=options.keep_tree)
        #: one line for the user when the journal was damaged (set by open())
        self.journal_warning = ""
        self.reconciled = 0
        #: sha256 -> id of files recovered from OUT whose input has not been seen yet
        self._unclaimed: dict[str, str] = {}

    @property
    def state(self) -> JournalState:
        """What the journal says now (read only: ``journal.record`` changes it)."""
        return self.journal.state

    # ------------------------------------------------------------------ setup / recovery
    def open(self) -> int:
        """Create the output, take the lock, and finish or roll back what a killed run left. Returns #recovered."""
        if self.options.dry_run:
            # read-only: a torn tail is left for the lock holder to cut
            self.journal.read(repair=False)
            return 0
        # files in an output that dermsort never wrote to (no state, no results.csv) are somebody else's:
        # they are never touched or recorded; in an output it did write to, they are reconciled
        used_before = self.state_dir.is_dir() or (self.out / "results.csv").exists()
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
            lock_exclusive(self._lock_fd)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise OutputError(f"another dermsort is already sorting into {self.out}") from None
        try:
            existed = self.journal.path.exists()
            self.journal.read()
            self._damaged_copy = self.journal.drop_bad_lines() if self.state.bad_lines else None
            self.journal.open()
            for sub in ("", BENIGN, REVIEW):  # the folders' names are durable before anything is placed in them
                fsync_dir(self.out / sub)
            recovered = recover_pending(self.journal, self.out)
            # partial copies from a kill: the source is still where it was (sources go only after done)
            for part in self.tmp_dir.glob("*.part"):
                part.unlink(missing_ok=True)
            if used_before:
                self._reconcile(existed)
            self._unclaimed = self.state.unclaimed_recovered()
            if not (self.out / "results.csv").exists():
                # a results.csv from the start (a header is a few hundred bytes): a run that fails later with a
                # full disk still leaves one that lists what was recorded before (best effort: the end of
                # the run writes it again and reports a failure)
                try:
                    write_results_csv(self.state, self.out / "results.csv")
                except OSError as exc:
                    log.debug("results.csv not written at start: %s", exc)
            for stale in [*self.state_dir.glob(".write-test-*"), self.out / ".results.csv.tmp"]:
                stale.unlink(missing_ok=True)  # left by a kill
        except OSError as exc:
            raise self._output_error(exc, "recovering an interrupted run") from None
        return recovered

    def _reconcile(self, journal_existed: bool) -> None:
        """Files in OUT the journal does not account for: warn in one line, record them, rebuild results.csv."""
        damage = []
        if self.state.bad_lines:
            damage.append(f"{self.state.bad_lines} damaged line(s)")
        orphans = unaccounted(self.state, self.out)
        if orphans and not journal_existed:
            damage.append("journal missing")
        if not orphans and not damage:
            return
        self.reconciled = reconcile(self.journal, self.out, self.placer, self._classify_paths)
        self.placer._claimed = None  # names chosen from now on must see the recorded files
        what = ", ".join(damage) or "records missing"
        kept = f" (damaged copy kept as {self._damaged_copy.name})" if getattr(self, "_damaged_copy", None) else ""
        self.journal_warning = (f"the journal in {self.state_dir} was damaged ({what}){kept}; {self.reconciled} "
                                f"file(s) in {self.out} it did not account for were checked, classified and recorded "
                                "again; results.csv rebuilt")
        log.info("%s", self.journal_warning)  # the command prints it once, as its own warning line
        write_results_csv(self.state, self.out / "results.csv")

    def _classify_paths(self, paths: list[Path]) -> list[tuple[Decoded, Intent]]:
        spec = self.metadata.preprocess
        decoded = []
        for path in paths:
            try:
                st = os.stat(path, follow_symlinks=False)
                decoded.append(decode_one(Candidate(path, st.st_size, st.st_mtime_ns), spec))
            except OSError:
                decoded.append(Decoded(Candidate(path, 0, 0), skip="vanished"))
        return [(d, rec) for d, rec in zip(decoded, self._score(decoded))]

    def close(self) -> None:
        self.journal.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ------------------------------------------------------------------ main loop
    def run(self, files: list[Candidate] | None = None,
            progress: Callable[[int], None] | None = None) -> SortSummary:
        summary = SortSummary(threshold=self.threshold, backend=self.backend.describe(),
                              threshold_overridden=self.options.threshold is not None,
                              validated_threshold=self.validated_threshold, artifact_accepted=self.artifact_accepted,
                              reconciled=self.reconciled)
        self.reconciled = 0
        start = time.perf_counter()
        if files is None:
            notes = ScanNotes(ignored=summary.ignored)
            files = scan(self.input_dir, self.options.recursive, notes=notes)
            summary.in_subfolders, summary.hidden = notes.in_subfolders, notes.hidden
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
            if todo and not self.options.dry_run:
                # inputs renamed or moved since they were sorted are matched by sha256, not sorted twice
                for sha, rid in self.state.sorted_elsewhere().items():
                    self._unclaimed.setdefault(sha, rid)
            self._sort_batches(todo, summary, progress)
            failed = False
        finally:
            summary.seconds = time.perf_counter() - start
            if failed and not self.options.dry_run:
                # partial copies (a disk-full failure) are never sorted files: free their space now, so that
                # results.csv below can still be written, rather than at the next start
                for part in self.tmp_dir.glob("*.part"):
                    try:
                        part.unlink()
                    except OSError:
                        pass
            if not self.options.dry_run and self.journal.is_open:
                try:
                    size = self.journal.size()
                    if size != self._csv_at:
                        write_results_csv(self.state, self.out / "results.csv")
                        self._csv_at = size
                except OSError as exc:
                    summary.results_error = f"could not write {self.out / 'results.csv'}: {exc.strerror or exc}"
                    # the command reports it (one line: sort's error, watch's warning), not the log too
                    log.info("%s", summary.results_error)
        return summary

    def _sort_batches(self, todo: list[Candidate], summary: SortSummary,
                      progress: Callable[[int], None] | None) -> None:
        """Read ahead, score and place ``todo`` batch by batch, one model call in flight."""
        with inference_thread(self.backend, inline=self.options.dry_run) as infer:
            # one batch in flight: batch k's model call runs on the worker while this thread places
            # batch k-1 (journal, copies, fsyncs); every journal event is still written by this thread,
            # in the same order as without the overlap
            scored: Scored | None = None
            batch: list[Decoded] = []
            try:
                for item in self._decode_stream(todo):
                    batch.append(item)
                    if len(batch) >= self.options.batch_size:
                        started, batch = batches.start(self.backend, batch, infer), []
                        scored = self._advance(scored, started, summary, progress)
                    if self.stop.is_set():
                        summary.interrupted = True
                        break
                if batch and not summary.interrupted:
                    started, batch = batches.start(self.backend, batch, infer), []
                    scored = self._advance(scored, started, summary, progress)
                scored = self._advance(scored, None, summary, progress)
            finally:
                if scored is not None:  # an error: wait for the model call in flight, release its files
                    scored.abandon()
                for d in batch:
                    d.close()

    def _already_sorted(self, cand: Candidate, summary: SortSummary) -> bool:
        rid = self.state.by_source.get(str(cand.path))
        if rid is None:
            return False
        rec = self.state.intents[rid]
        replaced = bool(cand.ino and rec.ino) and (rec.ino, rec.ctime_ns) != (cand.ino, cand.ctime_ns)
        if replaced or (rec.size, rec.mtime_ns) != (cand.size, cand.mtime_ns):
            try:
                if not rec.sha256 or sha256_file(cand.path) != rec.sha256:
                    return False  # new content under an old name: sort it again (it gets its own name)
            except OSError:
                return False
        if self.options.move and not self.options.dry_run:
            self._finish_move(rec, cand.path, summary)
        return True

    def _finish_move(self, rec: Intent, source: Path, summary: SortSummary) -> None:
        """A move whose done record is durable but whose source was not yet removed (killed in between)."""
        d = decode_one(Candidate(source, 0, 0), self.metadata.preprocess, hash_only=True)
        try:
            if d.skip or d.identity is None:
                summary.keep_source(str(source), d.skip or "unreadable")
                return
            dest = self.out / rec.dest
            same = d.identity.same_inode(Identity.at(dest)) or (
                bool(rec.sha256) and d.sha256 == rec.sha256 and _sha_or_none(dest) == rec.sha256)
            if not same:
                summary.keep_source(str(source), f"sorted earlier, but {rec.dest} is missing or differs from it, "
                                    "so it was not removed")
                return
            d.sha256 = d.sha256 or rec.sha256
            if self.placer.remove_source(d, rec, summary):
                self.journal.record(SourceRemoved(rec.id), sync=False)
        finally:
            d.close()

    def _decode_stream(self, todo: list[Candidate]) -> Iterator[Decoded]:
        thumbs = None if self.options.dry_run else self.state_dir / "thumbs"  # the review page's thumbnails
        return decode_ahead(todo, self.metadata.preprocess, self.options.workers, self.options.batch_size, thumbs,
                            self.stop)

    def _advance(self, scored: Scored | None, nxt: Scored | None, summary: SortSummary,
                 progress: Callable[[int], None] | None) -> Scored | None:
        """Place ``scored`` (its model call started earlier) while ``nxt``'s runs; returns ``nxt``."""
        if scored is not None:
            try:
                self._process(scored, summary, progress)
            except BaseException:
                if nxt is not None:
                    nxt.abandon()
                raise
        return nxt

    def _score(self, batch: list[Decoded]) -> list[Intent]:
        """Run the model on the decoded images of ``batch``; one intent record per item."""
        return self._records(batches.start(self.backend, batch, None))

    def _records(self, scored: Scored) -> list[Intent]:
        """One intent record per item of a batch whose model call was started by ``batches.start``."""
        return [self._record(d, *self.decide(d, sc.p_malignant, sc.gate), sc.p_malignant, sc.top, sc.gate)
                for d, sc in zip(scored.batch, scored.scores())]

    def classify(self, files: list[Candidate]) -> Iterator[tuple[Decoded, Intent]]:
        """Decide each file exactly as a sort would (same reading, checks, model call and rule), placing
        nothing: ``dermsort validate`` measures the decisions a sort at this site would make."""
        batch: list[Decoded] = []
        for item in self._decode_stream(files):
            batch.append(item)
            if len(batch) >= self.options.batch_size:
                yield from self._classified(batch)
                batch = []
        if batch:
            yield from self._classified(batch)

    def _classified(self, batch: list[Decoded]) -> list[tuple[Decoded, Intent]]:
        try:
            return list(zip(batch, self._score(batch)))
        finally:
            for d in batch:
                d.close()

    def _process(self, scored: Scored, summary: SortSummary, progress: Callable[[int], None] | None) -> None:
        try:
            # inputs that are files recovered from OUT are claimed, not placed (their model call is wasted)
            batch = scored.batch = self._claim_recovered(scored.batch, summary)
            records = list(zip(batch, self._records(scored)))
            self._place(records, summary)
            for d in batch:  # the review page's thumbnails: written by this thread, after the batch is placed
                if d.thumb:
                    write_thumbnail(self.state_dir / "thumbs", d.sha256, d.thumb)
                    d.thumb = None
        finally:
            scored.close()
        if progress:
            progress(len(batch))

    def _claim_recovered(self, batch: list[Decoded], summary: SortSummary) -> list[Decoded]:
        """Inputs whose bytes are a file recovered from OUT (journal damage): recorded as its source, not sorted twice."""
        recovered = self._unclaimed
        if not recovered or self.options.dry_run:
            return batch
        rest = []
        for d in batch:
            rid = recovered.pop(d.sha256, None) if d.sha256 and not d.skip else None
            if rid is None:
                rest.append(d)
                continue
            rec = self.state.intents[rid]
            if not rec.recovered_from_output and _sha_or_none(self.out / rec.dest) != rec.sha256:
                rest.append(d)  # its copy in OUT is gone or damaged: this input is sorted (again), not claimed
                continue
            if not rec.recovered_from_output:
                summary.same_as_sorted.append({"file": str(d.cand.path), "dest": rec.dest,
                                               "was": rec.file})
            else:
                summary.skipped_already_sorted += 1
            self.journal.record(claim_record(rid, d, self.input_dir))
            if self.options.move:
                rec = self.state.intents[rid]
                if self.placer.remove_source(d, rec, summary):
                    self.journal.record(SourceRemoved(rid), sync=False)
            d.close()
        return rest

    def decide(self, d: Decoded, p: float | None, gate_score: float | None = None) -> tuple[str, str]:
        """The decision rule (decision.decide) at this run's threshold and the model's not-dermoscopy gate."""
        return decide(d, p, gate_score, self.threshold, self.metadata.gate)

    def _record(self, d: Decoded, decision: str, reason: str, p: float | None,
                top: tuple[str, float] | tuple[None, None] = (None, None),
                gate_score: float | None = None) -> Intent:
        run = RunFacts(run_id=self.run_id, input_dir=self.input_dir, threshold=self.threshold,
                       threshold_overridden=self.options.threshold is not None, move=self.options.move,
                       artifact_accepted=self.artifact_accepted, signature=self.signature,
                       model_id=self.metadata.model_id, site_profile=self.options.site_profile)
        return intent_record(d, decision, reason, p, run, self.backend.describe(), top, gate_score)

    # ------------------------------------------------------------------ placement
    def _place(self, records: list[tuple[Decoded, Intent]], summary: SortSummary) -> None:
        if self.options.dry_run:
            for d, rec in records:
                if d.skip or (d.unreadable and not self.options.move):
                    summary.leave(rec.file, rec.reason)
                else:
                    summary.count(rec)
            return
        try:
            self.placer.place_batch(records, summary)
        except OutputError:
            raise
        except OSError as exc:
            raise self._output_error(exc, "sorting") from None

    def _output_error(self, exc: OSError, when: str) -> OutputError:
        if exc.errno == errno.ENOSPC:
            return OutputError(f"disk full while {when} into {self.out}; nothing was lost: sorted images are recorded "
                               "in the journal and the rest are still in the input folder; free space and re-run")
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return OutputError(f"no write permission for output folder {self.out} ({exc.strerror})")
        if exc.errno == errno.ENOENT and not (self.out.is_dir() and self.state_dir.is_dir()):
            return OutputError(f"output folder {self.out} disappeared while {when}; nothing was lost: "
                               "unsorted images are still in the input folder; re-run")
        where = f" ({exc.filename})" if exc.filename else ""
        return OutputError(f"cannot write to {self.out} while {when}: {exc.strerror or exc}{where}")


def _sha_or_none(path: Path) -> str | None:
    try:
        return sha256_file(path)
    except OSError:
        return None
