"""Learning targets of the `rl` recipes (a benchmark, not a test: minutes per recipe on 2 cores).

Runs every recipe in ``pipelines/`` that has an ``rl`` stage with ``alignops run`` (as a user does,
one recipe after another), then prints one row per stage (recipe, stage, type, algorithm, metric,
before, after, change, seconds) and checks the targets of issue 4:

- ``grpo``, ``rloo``, ``reinforce_pp`` (and the other verifiable-reward algorithms) raise held-out
  greedy accuracy (``accuracyAfter - accuracyBefore``) by at least 0.15;
- ``ppo`` (issue 4), ``apa`` and ``p3o`` (issue 16) raise the reward mean (``rewardLast - rewardFirst``)
  by at least 0.1;
- every stage of those recipes takes under 300 seconds;
- recipes in ``RECIPE_TARGETS`` are held to their own figures instead: the quickstart's sft reaches
  held-out accuracy 0.45 and its grpo 0.60 with a gain of at least 0.05, under fp32 and bf16 alike.

Exit status 0 when every target is met, 1 otherwise.

    .venv/bin/python benchmarks/learning_rl.py                       # every rl recipe
    .venv/bin/python benchmarks/learning_rl.py quickstart.yaml rloo.yaml
    .venv/bin/python benchmarks/learning_rl.py quickstart.yaml --precision fp32 bf16 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import yaml
from recipe_runs import (add_variant_options, fmt, print_aligned, print_spread, recipe_cell, run_recipe, seconds_cell,
                         stage_seconds, variant_name, variant_overrides, variants)

REPO = Path(__file__).resolve().parents[1]
STAGE_SECONDS = 300.0
ACCURACY_GAIN = 0.15
REWARD_GAIN = 0.10
# Recipes whose stages are checked against their own figures instead (the recipe's comment says why):
# (recipe, stage) -> (least held-out accuracy after the stage, least gain over its start).
# The quickstart's SFT ends anywhere between 0.58 and 0.87 over seeds and precisions (where the tiny
# model's sums click varies), so a fixed +0.15 for its GRPO is out of reach from a high start; the
# quickstart promises accuracy >= 0.45 after sft and >= 0.60 after grpo, and grpo must still gain.
RECIPE_TARGETS = {("quickstart.yaml", "sft"): (0.45, 0.0), ("quickstart.yaml", "grpo"): (0.60, 0.05)}
ACCURACY_ALGORITHMS = ("grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "remax")
REWARD_ALGORITHMS = ("ppo", "apa", "p3o")


def rl_recipes(names: list[str]) -> list[Path]:
    recipes = sorted((REPO / "pipelines").glob("*.yaml"))
    if names:
        recipes = [r for r in recipes if r.name in names]
    return [r for r in recipes if any(s.get("type") == "rl" for s in yaml.safe_load(r.read_text())["spec"]["stages"])]


def rows_of(recipe: Path, document: dict, status: dict) -> list[dict]:
    rows = []
    observed = {s["name"]: s for s in status.get("stages", [])}
    for stage in document["spec"]["stages"]:
        seen = observed.get(stage["name"], {})
        metrics = seen.get("metrics", {})
        row = {"recipe": recipe.name, "stage": stage["name"], "type": stage["type"], "algorithm": stage.get("algorithm", "-"),
               "phase": seen.get("phase", "-"), "seconds": stage_seconds(seen), "metric": "accuracy",
               "before": metrics.get("accuracyBefore"), "after": metrics.get("accuracyAfter"), "target": None}
        if stage["type"] == "rl":
            algorithm = stage.get("algorithm", "grpo")
            if algorithm in REWARD_ALGORITHMS:
                row.update(metric="reward", before=metrics.get("rewardFirst"), after=metrics.get("rewardLast"), target=REWARD_GAIN)
            elif algorithm in ACCURACY_ALGORITHMS:
                row["target"] = ACCURACY_GAIN
            row["algorithm"] = algorithm
        floor = RECIPE_TARGETS.get((recipe.name, stage["name"]))
        if floor is not None:
            row.update(metric="accuracy", before=metrics.get("accuracyBefore"), after=metrics.get("accuracyAfter"),
                       target=floor[1], floor=floor[0])
        rows.append(row)
    return rows


def verdict(row: dict) -> str:
    problems = []
    if row["phase"] != "Succeeded":
        problems.append(f"phase {row['phase']}")
    if row["seconds"] is None or row["seconds"] >= STAGE_SECONDS:
        problems.append("too slow")
    if row["target"] is not None:
        if row["before"] is None or row["after"] is None:
            problems.append("no figures")
        elif row["after"] - row["before"] < row["target"]:
            problems.append(f"gain < {row['target']}")
        elif row.get("floor") is not None and row["after"] < row["floor"]:
            problems.append(f"after < {row['floor']}")
    return "ok" if not problems else "; ".join(problems)


def print_table(rows: list[dict]) -> None:
    columns = ("recipe", "stage", "type", "algorithm", "metric", "before", "after", "change", "seconds", "check")
    table = []
    for row in rows:
        change = row["after"] - row["before"] if row["before"] is not None and row["after"] is not None else None
        table.append([recipe_cell(row), row["stage"], row["type"], row["algorithm"], row["metric"], fmt(row["before"]),
                      fmt(row["after"]), fmt(change), seconds_cell(row["seconds"]), verdict(row)])
    print_aligned(columns, table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*", help="recipe file names under pipelines/ (default: every one with an rl stage)")
    parser.add_argument("--workdir", type=Path, help="where the runs go (default: a temporary directory)")
    add_variant_options(parser)
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="alignops-learning-rl-"))
    rows = []
    runs = variants(args)
    for recipe in rl_recipes(args.recipes):
        document = yaml.safe_load(recipe.read_text())
        for precision, seed in runs:
            name = variant_name(precision, seed)
            document, status, wall = run_recipe(recipe, workdir / recipe.stem / name,
                                                overrides=variant_overrides(document, precision, seed))
            print(f"{recipe.name} ({name}): {status.get('phase', 'no status')} in {wall:.0f} s", flush=True)
            rows += [{**row, "precision": precision, "seed": seed} for row in rows_of(recipe, document, status)]
    print()
    print_table(rows)
    if len(runs) > 1 or runs[0] != (None, None):
        print("\nover seeds, per precision (met: seeds whose stage met its target)\n")
        print_spread(rows, verdict)
    failed = [r for r in rows if verdict(r) != "ok"]
    print(f"\n{len(rows)} stages, {len(failed)} missing a target (rl targets: accuracy +{ACCURACY_GAIN} for "
          f"{', '.join(ACCURACY_ALGORITHMS)}; reward +{REWARD_GAIN} for {', '.join(REWARD_ALGORITHMS)}; "
          f"{', '.join(sorted({r for r, _ in RECIPE_TARGETS}))}: the recipe's own floors; every stage < {STAGE_SECONDS:.0f} s); "
          f"workdir {workdir}")
    return 1 if failed or not any(r["type"] == "rl" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
