"""Helpers shared by every test package (import as ``from suite import ...``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PIPELINES = sorted((REPO / "pipelines").glob("*.yaml"))


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600,
            columns: int = 200) -> subprocess.CompletedProcess:
    """The real ``alignops`` command, in a subprocess, as a user types it (output to a pipe, as to a
    log file, ``columns`` wide)."""
    return subprocess.run([sys.executable, "-m", "alignops.cli.main", *args], cwd=cwd or REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {}), "COLUMNS": str(columns)})


def peak_cpu_bytes(fn) -> int:
    """Peak of live CPU tensor memory while ``fn()`` runs, from torch's profiler allocation events
    (tracemalloc does not see torch's allocator)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak
