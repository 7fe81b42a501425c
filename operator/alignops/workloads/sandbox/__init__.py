"""Running untrusted code (a policy's response) confined: ``run_programs`` hands the programs to the
sandbox supervisor (``supervisor.py``, a separate single-threaded process that confines, runs,
kills and cleans up each one) and returns each program's outcome. docs/sandbox.md is the threat
model: what each layer stops, and what is left where the platform lacks a layer.

Used by the ``code_execution`` reward function (``alignops.workloads.rl.rewards``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

SUPERVISOR = Path(__file__).with_name("supervisor.py")
# the uid the programs run as when the stage runs as root (tests, CI): "nobody", which owns nothing
SANDBOX_UID = 65534
# interpreters tried in order; as root the first the sandbox uid may execute is used
INTERPRETERS = (sys.executable, "/usr/local/bin/python3", "/usr/bin/python3")


@dataclass(frozen=True)
class Limits:
    """What one program may use. ``wall_seconds`` is the time until it is killed; ``cpu_seconds``
    its CPU time (RLIMIT_CPU); ``memory_mb`` its address space (RLIMIT_AS); ``max_processes`` the
    processes it may start (RLIMIT_NPROC); ``max_file_mb`` the largest file it may write, its output
    included (RLIMIT_FSIZE); ``max_output_bytes`` the stdout kept."""

    wall_seconds: float = 2.0
    cpu_seconds: int = 2
    memory_mb: int = 256
    max_processes: int = 16
    max_file_mb: int = 1
    max_output_bytes: int = 65536


@dataclass(frozen=True)
class Outcome:
    """How one program ended: ``exit_code`` (None when a signal killed it), ``signal``,
    ``timed_out`` (killed at ``wall_seconds``), its stdout (capped) and the tail of its stderr;
    ``clean`` says every process it started was gone afterwards."""

    exit_code: int | None
    signal: int | None
    timed_out: bool
    stdout: str
    stderr: str
    seconds: float
    clean: bool

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


@dataclass(frozen=True)
class Isolation:
    """The layers this platform gave: the uid the programs ran as (and whether privileges were
    dropped to it), a network namespace, the Landlock ABI (0: none) and the interpreter."""

    uid: int
    dropped_privileges: bool
    network_namespace: bool
    landlock_abi: int
    interpreter: str

    def missing(self) -> list[str]:
        """The layers that fell back, each with what that leaves open (for a warning)."""
        gaps = []
        if not self.network_namespace:
            gaps.append("no network namespace: only Landlock (ABI >= 4) blocks TCP, nothing blocks UDP; "
                        "deny the stage pods' egress with a NetworkPolicy")
        if not self.landlock_abi:
            gaps.append("no Landlock: files are confined by permissions alone" + (
                " (the sandbox uid can write world-writable directories; its leftovers there are deleted)"
                if self.dropped_privileges else " (the program runs as the stage's own uid and can read and write what it can)"))
        elif self.landlock_abi < 4:
            gaps.append(f"Landlock ABI {self.landlock_abi} < 4: TCP is not blocked by Landlock")
        return gaps


class SandboxError(RuntimeError):
    """The supervisor itself failed (not a program: those only get an Outcome)."""


def run_programs(programs: list[str], limits: Limits = Limits(), stdin: list[str] | None = None,
                 parent: str | None = None) -> tuple[list[Outcome], Isolation]:
    """Run each Python program confined, one after another; (outcomes in order, isolation used).
    ``parent``: where the supervisor makes its scratch directories (default: the temp directory)."""
    request = {
        "programs": [{"code": code, "stdin": (stdin or [""] * len(programs))[i]} for i, code in enumerate(programs)],
        "limits": asdict(limits),
        "uid": SANDBOX_UID,
        "interpreters": list(INTERPRETERS),
        "parent": parent or tempfile.gettempdir(),
    }
    budget = 30 + len(programs) * (limits.wall_seconds + 12)  # each program's wall time plus the kill patience
    done = subprocess.run([sys.executable, "-I", "-S", str(SUPERVISOR)], input=json.dumps(request), capture_output=True,
                          text=True, timeout=budget, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    if done.returncode != 0:
        raise SandboxError(f"the sandbox supervisor failed (exit {done.returncode}): {done.stderr[-2000:]}")
    answer = json.loads(done.stdout)
    return [Outcome(**r) for r in answer["results"]], Isolation(**answer["isolation"])
