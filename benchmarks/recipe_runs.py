"""What the learning benchmarks share: run a recipe with ``alignops run`` as a user does, read its
stages' durations, and print a table of rows."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import yaml


def stage_seconds(stage: dict) -> float | None:
    """Seconds from a stage's startTime to its completionTime (None while either is missing)."""
    if not stage.get("startTime") or not stage.get("completionTime"):
        return None
    parse = lambda t: datetime.fromisoformat(t.replace("Z", "+00:00"))  # noqa: E731
    return (parse(stage["completionTime"]) - parse(stage["startTime"])).total_seconds()


def run_recipe(recipe: Path, workdir: Path, env: dict[str, str] | None = None) -> tuple[dict, dict, float]:
    """(the recipe as parsed, its status, wall seconds of the whole run); a failed run's output
    tail goes to stderr."""
    document = yaml.safe_load(recipe.read_text())
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "alignops.cli.main", "run", str(recipe), "--workdir", str(workdir)],
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    status_path = workdir / document["metadata"]["name"] / "status.json"
    if done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-3000:], file=sys.stderr)
    return document, json.loads(status_path.read_text())["status"] if status_path.exists() else {}, wall


def fmt(value) -> str:
    """A figure for a table cell: 3 decimals for floats, '-' for None."""
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def seconds_cell(seconds: float | None) -> str:
    return f"{seconds:.0f}" if seconds is not None else "-"


def print_aligned(columns: tuple[str, ...], table: list[list[str]]) -> None:
    """Left-aligned columns, as wide as their widest cell, under a dashed rule."""
    widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for r in table:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))
