"""The sandbox supervisor: runs untrusted programs one after another, each confined, and leaves
nothing of them behind. Started by ``alignops.workloads.sandbox.run_programs`` as
``python -I -S supervisor.py`` (standard library only, single-threaded, so the confinement that
runs between ``fork`` and ``exec`` is safe); reads a JSON request on stdin, writes a JSON answer
on stdout. docs/sandbox.md is the threat model.

Per program, in the forked child before ``exec``:
1. its own session and process group;
2. a network namespace with nothing in it but a down loopback (``unshare``: as root, or in a user
   namespace where the kernel lets an unprivileged process make one), where the platform allows;
3. rlimits: CPU seconds, address space, processes, file size, open files, no core dumps;
4. as root: every group dropped and the sandbox uid taken (the tests and CI run as root);
5. Landlock where the kernel has it: reads only below the system and interpreter directories,
   writes only below the program's own scratch directory, no TCP (ABI 4), no signals or abstract
   unix sockets out of the sandbox (ABI 6).
Afterwards: the supervisor (a child subreaper, so orphans of the program become its children)
SIGKILLs the process group and every descendant until it has no child left, and removes the
scratch directory (and, as root without Landlock, whatever the sandbox uid left in the
world-writable directories).
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import landlock  # noqa: E402  (beside this file; the supervisor runs without site-packages)

_CLONE_NEWUSER, _CLONE_NEWNET = 0x10000000, 0x40000000
_PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)
# what Python's startup reads, besides the interpreter's own prefix
SYSTEM_READ = ["/usr", "/lib", "/lib64", "/lib32", "/bin", "/etc/ld.so.cache", "/dev/null", "/dev/urandom"]
WORLD_WRITABLE = ["/tmp", "/var/tmp", "/dev/shm"]
KILL_PATIENCE_SECONDS = 10.0


def _unshare(flags: int) -> None:
    if _libc.unshare(flags) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"unshare: {os.strerror(error)}")


def _netns_flags() -> int:
    return _CLONE_NEWNET if os.geteuid() == 0 else _CLONE_NEWUSER | _CLONE_NEWNET


def probe_network_namespace() -> bool:
    """Whether a forked child may make itself a network namespace here."""
    pid = os.fork()
    if pid == 0:
        try:
            _unshare(_netns_flags())
            os._exit(0)
        except BaseException:  # noqa: BLE001 - the child only reports
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def runnable_by_others(path: str) -> bool:
    """Whether a uid that owns nothing may execute ``path`` (every directory above it searchable)."""
    path = os.path.realpath(path)
    if not os.path.isfile(path) or not os.stat(path).st_mode & stat.S_IXOTH:
        return False
    parent = os.path.dirname(path)
    while True:
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            return False
        if parent == "/":
            return True
        parent = os.path.dirname(parent)


def pick_interpreter(candidates: list[str], uid: int | None) -> str:
    for candidate in candidates:
        path = os.path.realpath(candidate)
        if os.path.isfile(path) and (uid is None or runnable_by_others(path)):
            return path
    raise RuntimeError(f"no Python interpreter the sandbox uid {uid} may run among {candidates}")


def _process_table() -> dict[int, int]:
    """pid -> parent pid of every process visible in /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                text = handle.read().decode("ascii", "replace")
        except OSError:
            continue  # exited meanwhile
        fields = text[text.rfind(")") + 2 :].split()
        table[int(entry)] = int(fields[1])
    return table


def descendants(root: int) -> list[int]:
    table = _process_table()
    children: dict[int, list[int]] = {}
    for pid, ppid in table.items():
        children.setdefault(ppid, []).append(pid)
    found, frontier = [], [root]
    while frontier:
        kids = children.get(frontier.pop(), [])
        found += kids
        frontier += kids
    return found


def kill_everything_below_me() -> bool:
    """SIGKILL every descendant until none is left (orphans come to this subreaper, so having no
    child means nothing of the program lives on); True when all are gone in time."""
    deadline = time.monotonic() + KILL_PATIENCE_SECONDS
    while time.monotonic() < deadline:
        for pid in descendants(os.getpid()):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0] != 0:
                pass
        except ChildProcessError:
            return True
        time.sleep(0.002)
    return False


def remove_leftovers(uid: int) -> None:
    """As root without Landlock: delete what the sandbox uid created in world-writable places."""
    for directory in WORLD_WRITABLE:
        try:
            entries = os.listdir(directory)
        except OSError:
            continue
        for name in entries:
            path = os.path.join(directory, name)
            try:
                info = os.lstat(path)
            except OSError:
                continue
            if info.st_uid == uid:
                if stat.S_ISDIR(info.st_mode):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.unlink(path)


def own_tasks(uid: int) -> int:
    """Tasks (threads count: RLIMIT_NPROC does) of ``uid`` now."""
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry}/task"))
            except OSError:
                continue
    return count


class Supervisor:
    def __init__(self, request: dict):
        self.limits = request["limits"]
        self.uid = request.get("uid") if os.geteuid() == 0 else None
        self.interpreter = pick_interpreter(request["interpreters"], self.uid)
        self.landlock_abi = landlock.abi_version()
        self.network_namespace = probe_network_namespace()
        self.base = tempfile.mkdtemp(prefix="alignops-sandbox-", dir=request.get("parent"))
        os.chmod(self.base, 0o711)  # the sandbox uid may pass through to its own directory, not list it
        # the processes the sandbox may add to those its uid already has (RLIMIT_NPROC counts them all)
        self.process_limit = self.limits["max_processes"] + (own_tasks(os.getuid()) if self.uid is None else 0)
        self.read_paths = SYSTEM_READ + [os.path.dirname(os.path.dirname(self.interpreter))]

    def isolation(self) -> dict:
        return {"uid": self.uid if self.uid is not None else os.getuid(), "dropped_privileges": self.uid is not None,
                "network_namespace": self.network_namespace, "landlock_abi": self.landlock_abi,
                "interpreter": self.interpreter}

    def _confine(self, workdir: str):
        limits, uid = self.limits, self.uid

        def confine() -> None:  # in the child, between fork and exec
            if self.network_namespace:
                _unshare(_netns_flags())
            cpu = max(1, int(limits["cpu_seconds"]))
            for which, value in ((resource.RLIMIT_CPU, (cpu, cpu + 1)),
                                 (resource.RLIMIT_AS, (limits["memory_mb"] << 20,) * 2),
                                 (resource.RLIMIT_NPROC, (self.process_limit,) * 2),
                                 (resource.RLIMIT_FSIZE, (limits["max_file_mb"] << 20,) * 2),
                                 (resource.RLIMIT_NOFILE, (64, 64)),
                                 (resource.RLIMIT_CORE, (0, 0))):
                resource.setrlimit(which, value)
            if uid is not None:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
            if self.landlock_abi:
                landlock.restrict(self.landlock_abi, self.read_paths, [workdir])

        return confine

    def run(self, index: int, program: dict) -> dict:
        workdir = os.path.join(self.base, f"p{index}")
        os.mkdir(workdir, 0o700)
        if self.uid is not None:
            os.chown(workdir, self.uid, self.uid)
        with open(os.path.join(workdir, "main.py"), "w") as handle:
            handle.write(program["code"])
        if self.uid is not None:
            os.chown(os.path.join(workdir, "main.py"), self.uid, self.uid)
        out_path, err_path = os.path.join(self.base, f"p{index}.out"), os.path.join(self.base, f"p{index}.err")
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "PYTHONDONTWRITEBYTECODE": "1"}
        started = time.monotonic()
        timed_out = False
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            child = subprocess.Popen([self.interpreter, "-I", "-S", "main.py"], cwd=workdir, env=env, stdin=subprocess.PIPE,
                                     stdout=out, stderr=err, start_new_session=True, preexec_fn=self._confine(workdir),
                                     close_fds=True)
            try:
                child.stdin.write(program.get("stdin", "").encode())
                child.stdin.close()
            except OSError:
                pass  # the program exited or closed its input first
            try:
                child.wait(timeout=self.limits["wall_seconds"])
            except subprocess.TimeoutExpired:
                timed_out = True
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            code = child.wait()
        clean = kill_everything_below_me()
        seconds = time.monotonic() - started
        if self.uid is not None and not self.landlock_abi:
            remove_leftovers(self.uid)
        shutil.rmtree(workdir, ignore_errors=True)
        cap = self.limits["max_output_bytes"]
        result = {"exit_code": code if code >= 0 else None, "signal": -code if code < 0 else None, "timed_out": timed_out,
                  "stdout": _read(out_path, cap), "stderr": _read(err_path, 2048, tail=True), "seconds": round(seconds, 4),
                  "clean": clean}
        os.unlink(out_path)
        os.unlink(err_path)
        return result

    def close(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


def _read(path: str, cap: int, tail: bool = False) -> str:
    with open(path, "rb") as handle:
        if tail:
            handle.seek(max(0, os.path.getsize(path) - cap))
        return handle.read(cap).decode("utf-8", "replace")


def main() -> int:
    request = json.loads(sys.stdin.read())
    if _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    supervisor = Supervisor(request)
    try:
        results = [supervisor.run(i, program) for i, program in enumerate(request["programs"])]
    finally:
        supervisor.close()
    json.dump({"isolation": supervisor.isolation(), "results": results}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
