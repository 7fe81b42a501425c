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


def run_recipe(recipe: Path, workdir: Path, env: dict[str, str] | None = None,
               overrides: list[str] | None = None) -> tuple[dict, dict, float]:
    """(the recipe as parsed, its status, wall seconds of the whole run); ``overrides`` are
    ``--set`` assignments; a failed run's output tail goes to stderr."""
    document = yaml.safe_load(recipe.read_text())
    started = time.perf_counter()
    sets = [arg for value in overrides or [] for arg in ("--set", value)]
    done = subprocess.run([sys.executable, "-m", "alignops.cli.main", "run", str(recipe), "--workdir", str(workdir), *sets],
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


# -- repeated runs: --precision and --seeds ---------------------------------------------------------

def add_variant_options(parser) -> None:
    """``--precision`` and ``--seeds``: every recipe runs once per (precision, seed)."""
    parser.add_argument("--precision", nargs="*", default=[], choices=("auto", "fp32", "bf16"),
                        help="run each recipe under these precisions (default: the recipe's own); bf16 autocasts on the CPU too")
    parser.add_argument("--seeds", nargs="*", type=int, default=[],
                        help="run each recipe with these hyperparameters.seed values in every stage (default: the recipe's own)")


def variants(args) -> list[tuple[str | None, int | None]]:
    """(precision, seed) pairs to run; None keeps the recipe's value."""
    return [(p, s) for p in (args.precision or [None]) for s in (args.seeds or [None])]


def variant_overrides(document: dict, precision: str | None, seed: int | None) -> list[str]:
    """``--set`` assignments naming every stage (not ``stages.*``): the precision and the seed."""
    sets = []
    for stage in document["spec"]["stages"]:
        base = f"stages.{stage['name']}.hyperparameters"
        if precision is not None:
            sets.append(f"{base}.precision={precision}")
        if seed is not None:
            sets.append(f"{base}.seed={seed}")
    return sets


def variant_name(precision: str | None, seed: int | None) -> str:
    return "-".join(part for part in (precision, None if seed is None else f"seed{seed}") if part) or "as-is"


def recipe_cell(row: dict) -> str:
    """The recipe's name, with the run's precision and seed when they were set."""
    precision, seed = row.get("precision"), row.get("seed")
    return row["recipe"] if precision is None and seed is None else f"{row['recipe']} {variant_name(precision, seed)}"


def print_spread(rows: list[dict], verdict) -> None:
    """One line per (recipe, stage, precision) over its seeds: after and change, mean and minimum,
    and how many seeds met the stage's target (``verdict(row) == "ok"``)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["recipe"], row["stage"], row.get("precision") or "as-is"), []).append(row)
    columns = ("recipe", "stage", "precision", "seeds", "after mean", "after min", "change mean", "change min", "met")
    table = []
    for (recipe, stage, precision), members in groups.items():
        after = [r["after"] for r in members if r["after"] is not None]
        change = [r["after"] - r["before"] for r in members if r["after"] is not None and r["before"] is not None]
        mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
        table.append([recipe, stage, precision, str(len(members)), fmt(mean(after)), fmt(min(after) if after else None),
                      fmt(mean(change)), fmt(min(change) if change else None),
                      f"{sum(verdict(r) == 'ok' for r in members)}/{len(members)}"])
    print_aligned(columns, table)
