"""One ``alignops run`` per job directory at a time: an exclusive ``flock`` on
``<workdir>/<job>/run.lock``, whose text says who holds it (pid, host, since).

The kernel drops the lock when its process ends, however it ends, so a lock left by a run that
was killed is taken over by the next run (whose text then names the run it replaced); a second
run while the first is alive is refused with the holder's name. The file itself is never
removed: removing a locked file would let a third run lock a new file under the same name.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

LOCK_NAME = "run.lock"
# a filesystem without flock (some network mounts): the run goes on unlocked, as before locks existed
NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}


@dataclass(frozen=True)
class Holder:
    pid: int
    host: str
    since: str

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.host} since {self.since}"

    @classmethod
    def read(cls, fd: int) -> "Holder | None":
        try:
            value = json.loads(os.pread(fd, 4096, 0) or b"null")
            return cls(int(value["pid"]), str(value["host"]), str(value["since"]))
        except (ValueError, TypeError, KeyError, OSError):
            return None


class Locked(Exception):
    """Another live process holds the lock."""

    def __init__(self, path: Path, holder: Holder | None):
        self.path, self.holder = path, holder
        who = f"by {holder}" if holder else "by another process"
        super().__init__(f"{path.parent} is in use {who} (another `alignops run` of this job): wait for it to end "
                         "or stop it with Ctrl-C; a lock whose process is gone is taken over")


class RunLock:
    def __init__(self, directory: Path):
        self.path = Path(directory) / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> Holder | None:
        """Take the lock; returns the holder of a stale lock taken over (its process is gone), else
        None. Raises Locked when a live process holds it, OSError when the directory is unusable."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        locked = True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = Holder.read(fd)
            os.close(fd)
            raise Locked(self.path, holder) from None
        except OSError as exc:
            locked = False
            if exc.errno not in NO_LOCKS:
                os.close(fd)
                raise
        except BaseException:
            os.close(fd)
            raise
        # a run that ended cleanly leaves the file empty; unlocked, its text proves nothing
        stale = Holder.read(fd) if locked else None
        mine = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(mine).encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return stale

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass  # a full disk still lets the lock go with the descriptor
        finally:
            os.close(fd)
