"""The run lock of `alignops run` (an flock on <workdir>/<job>/run.lock): a live holder is named,
a dead one's lock is taken over, a clean release leaves nothing behind."""

from __future__ import annotations

import errno
import fcntl
import json
import os

import pytest

from alignops.run_lock import Holder, Locked, RunLock


def test_a_held_lock_names_its_holder_and_a_released_one_is_free(tmp_path):
    first = RunLock(tmp_path / "demo")
    assert first.acquire() is None and first.held
    with pytest.raises(Locked) as refused:
        RunLock(tmp_path / "demo").acquire()  # another open file: flock refuses it, in this process too
    holder = refused.value.holder
    assert holder.pid == os.getpid() and holder.host == os.uname().nodename and holder.since.endswith("Z")
    assert f"is in use by pid {os.getpid()} on {holder.host} since {holder.since}" in str(refused.value)
    first.release()
    assert (tmp_path / "demo" / "run.lock").read_text() == ""
    again = RunLock(tmp_path / "demo")
    assert again.acquire() is None  # a clean release is no stale lock
    again.release()


def test_the_lock_of_a_run_that_died_is_taken_over_and_named(tmp_path):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "run.lock").write_text(json.dumps({"pid": 4242, "host": "gone", "since": "2026-01-01T00:00:00Z"}))
    lock = RunLock(tmp_path / "demo")
    assert lock.acquire() == Holder(4242, "gone", "2026-01-01T00:00:00Z")
    assert json.loads((tmp_path / "demo" / "run.lock").read_text())["pid"] == os.getpid()
    lock.release()


def test_a_filesystem_without_locks_runs_unlocked(tmp_path, monkeypatch):
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "run.lock").write_text(json.dumps({"pid": 4242, "host": "h", "since": "s"}))
    lock = RunLock(tmp_path / "demo")
    assert lock.acquire() is None and lock.held  # its text proves nothing without a lock
    lock.release()
