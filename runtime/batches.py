"""Batches on their way to the model: read ahead on a thread pool, one model call in flight.

The sorter (and ``dermsort validate`` through it) reads and decodes files ahead of the model
(``decode_ahead``), starts a batch's model call (``start``: on the inference thread, or inline) and
turns the call's output into one ``Scores`` per item (``Scored.scores``). Nothing here writes a file or
the journal: placing a batch is the sorter's, on its own thread.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .backends.base import Backend
from .diagnosis import top_diagnoses
from .errors import DermsortError
from .reading import Decoded, decode_one
from .scan import Candidate

#: bytes of file data and decoded pixels the read-ahead may hold at once (a 24 MP PNG has no draft
#: mode and decodes to ~72 MB: the cap keeps peak memory flat whatever the input)
LOOKAHEAD_BYTES = 48 << 20


def decode_ahead(todo: list[Candidate], spec: Any, workers: int | None, batch_size: int, thumbs: Path | None,
                 stop: threading.Event) -> Iterator[Decoded]:
    """Read + hash + decode in a thread pool with bounded look-ahead: at most 2 batches of files, and at
    most LOOKAHEAD_BYTES of file data in flight (so a run of 24 MP PNGs cannot pile up in memory)."""
    workers = workers or max(1, min(8, (os.cpu_count() or 1)))
    ahead = max(2 * batch_size, 2 * workers)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending: deque = deque()
        in_flight = 0
        it = iter(todo)
        nxt = next(it, None)
        try:
            while pending or nxt is not None:
                # keep at least one file in flight; beyond that respect both caps
                while nxt is not None and (not pending or (len(pending) < ahead
                                                           and in_flight + nxt.size <= LOOKAHEAD_BYTES)):
                    pending.append((pool.submit(decode_one, nxt, spec, False, thumbs), nxt.size))
                    in_flight += nxt.size
                    nxt = next(it, None)
                fut, size = pending.popleft()
                in_flight -= size
                yield fut.result()
                if stop.is_set():
                    return
        finally:
            for fut, _ in pending:  # an error or a stop: do not decode what will not be placed
                if not fut.cancel():
                    try:
                        fut.result().close()
                    except Exception:  # noqa: BLE001 - only releasing descriptors here
                        pass


def inference_thread(backend: Backend, inline: bool = False) -> ThreadPoolExecutor | contextlib.nullcontext:
    """The thread that runs the model while the sorter places the batch before (a context manager; it
    gives None, meaning "call the model inline", for ``inline`` or a backend bound to its loading thread)."""
    if inline or not backend.infer_off_thread:
        return contextlib.nullcontext(None)
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="infer")


@dataclass(frozen=True)
class Scores:
    """What the model said about one image: p(malignant), its top diagnosis (display only) and the
    not-dermoscopy gate's score; all None for an item the model did not see (unreadable, skipped)."""

    p_malignant: float | None = None
    top: tuple[str, float] | tuple[None, None] = (None, None)
    gate: float | None = None


class Scored:
    """A batch whose model call has started: ``good`` are the items it scores, ``future`` its result."""

    def __init__(self, backend: Backend, batch: list[Decoded], good: list[Decoded], future: Future | None):
        self.backend = backend
        self.batch, self.good, self.future = batch, good, future
        self._items = list(batch)  # every item read, for close(), whatever ``batch`` becomes
        self.closed = False

    def result(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The model call's (probabilities, gate scores); waits for it. A library's failure (out of memory,
        a driver...) becomes one DermsortError line, not a traceback."""
        assert self.future is not None
        try:
            return self.future.result()
        except DermsortError:
            raise
        except Exception as exc:
            text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise DermsortError(f"the model call failed on {self.backend.spec.name} ({type(exc).__name__}: {text}); "
                                "nothing was lost: images sorted so far are recorded and the rest are still in "
                                "the input folder; re-run") from None

    def scores(self) -> list[Scores]:
        """One ``Scores`` per item of ``batch`` (in its order), from the model call."""
        found: dict[int, Scores] = {}
        if self.good:
            probs, gate = self.result()
            metadata = self.backend.metadata
            pm = probs[:, metadata.malignant_indices()].sum(axis=1)
            tops = top_diagnoses(probs, metadata.classes)  # display only: the decision rests on p and the gate
            for i, (d, p, top) in enumerate(zip(self.good, pm, tops)):
                found[id(d)] = Scores(float(p), top, None if gate is None else float(gate[i]))
        for d in self.batch:
            d.tensor = None  # the pixels are not needed any more
        return [found.get(id(d), Scores()) for d in self.batch]

    def close(self) -> None:
        """Release the files read for this batch (descriptors, read leases): once."""
        if not self.closed:
            self.closed = True
            for d in self._items:
                d.close()

    def abandon(self) -> None:
        """An error elsewhere: wait for the model call (the backend is not called twice at once; its error,
        if any, is not the one being raised), then release the files; nothing of it was recorded."""
        if self.future is not None:
            with contextlib.suppress(BaseException):
                self.future.result()
        self.close()


def start(backend: Backend, batch: list[Decoded], infer: ThreadPoolExecutor | None) -> Scored:
    """Start the model call for ``batch``'s decoded images (on ``infer``, or now when it is None)."""
    good = [d for d in batch if d.tensor is not None and not d.skip]
    if not good:
        return Scored(backend, batch, good, None)
    stacked = np.stack([d.tensor for d in good])
    for d in good:
        d.tensor = None  # the stack holds the pixels now
    if infer is not None:
        return Scored(backend, batch, good, infer.submit(backend.infer, stacked))
    done: Future = Future()
    try:
        done.set_result(backend.infer(stacked))
    except BaseException as exc:  # noqa: BLE001 - re-raised by result(), as if it ran on the thread
        done.set_exception(exc)
    return Scored(backend, batch, good, done)
