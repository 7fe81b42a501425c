"""Checkpoint commits that overlap training: the main process writes a checkpoint's files and uploads
them on one worker thread while the next steps (or the next round's rollouts) run.

What must happen in step (collectives, copies off the live tensors, the RNG streams) happens before
the commit is handed over (``TrainState.snapshot``); the worker only writes host copies and uploads.
One commit is in flight at a time: a new one waits for the last, so the scratch disk and host
memory hold one snapshot at most, and checkpoints are committed in order. A checkpoint counts as
committed only when its manifest is written, so a stage that reports one waits for it first
(``TrainLoop.wait_committed``), and the run's entrypoint drains the worker before it exits, so a
stage that fails still commits the checkpoint it had handed over (its last good one).
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, TypeVar

T = TypeVar("T")


class BackgroundCommits:
    """One worker thread for a run's commits; at most one commit in flight."""

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._pending: Future | None = None
        self.seconds = 0.0  # the worker's time writing and uploading, over the run

    def submit(self, commit: Callable[[], T]) -> None:
        """Run ``commit`` on the worker once the previous commit has finished (its error, if it
        failed, is raised here instead)."""
        self.wait()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="alignops-commit")
        self._pending = self._executor.submit(self._timed, commit)

    def _timed(self, commit: Callable[[], T]) -> T:
        started = time.perf_counter()
        try:
            return commit()
        finally:
            self.seconds += time.perf_counter() - started

    @property
    def in_flight(self) -> bool:
        return self._pending is not None

    def wait(self):
        """The last submitted commit's result once it has finished (None if none is pending); its
        exception if it failed."""
        pending, self._pending = self._pending, None
        return pending.result() if pending is not None else None

    def drain(self) -> None:
        """Finish whatever is in flight before the run exits (a failing stage keeps its last good
        checkpoint); an upload that fails here is reported, not raised over the stage's own error."""
        try:
            self.wait()
        except Exception as exc:  # noqa: BLE001 - the run is ending with its own outcome
            print(f"the last checkpoint's commit failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
