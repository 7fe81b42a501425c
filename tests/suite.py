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
