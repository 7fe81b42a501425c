"""Learning targets of the recipes in pipelines/ (a benchmark, not a test: minutes per recipe on 2 cores).

Runs recipes with ``alignops run`` in a temporary workdir, one after another as a user would, and
prints one row per stage (recipe, stage, type, algorithm, before, after, change, seconds, check).
Targets (issue 3, plus issue 4's for rl stages, taken from benchmarks/learning_rl.py):

- every stage finishes in under 180 seconds (rl stages: learning_rl.py's limit), every recipe in
  under 300 seconds (issue 16: at most 5 minutes on 2 cores);
- a ``reward`` stage reaches held-out pairwise accuracy ``accuracyAfter >= 0.9``;
- a ``preference`` stage with ``dpo`` raises held-out preference accuracy by at least 0.20 over its
  SFT start (``accuracyAfter - accuracyBefore``); bpe-lora-dpo by 0.15 (``RECIPE_DPO_GAIN``: its
  LoRA DPO holds at about +0.18, and its comment says so);
- every ``reward``, ``preference`` and ``rank`` stage ends with a lower loss than it started with;
- an ``sft`` stage trained on a ``generate`` stage's dataset (``datasets.train.fromStage``, issue 16:
  self-generated, verifier-filtered data) raises held-out accuracy by at least 0.05 over its start;
- a ``generate`` stage writes at least one record.
- the self-training stages (issue 16) raise held-out greedy accuracy over their SFT start by at
  least ``SELF_TRAINING_GAIN``: ``rejection_sampling`` (raft and rest) and ``online_dpo`` by 0.10,
  ``spin`` (on the SFT data alone) by 0.05. Over seeds 0-2 x fp32/bf16, raft, rest and oaif meet
  it on 4 of 6: not from the SFT starts below 0.3 that fp32 seeds 1 and 2 reach (their recipes
  say so); spin, from its 900-step SFT, on 6 of 6.

Exit status 0 when every target is met, 1 otherwise.

    .venv/bin/python benchmarks/learning.py                                  # every recipe
    .venv/bin/python benchmarks/learning.py zephyr-dpo.yaml instructgpt-rm.yaml
    .venv/bin/python benchmarks/learning.py --types reward preference rank   # recipes with these stages
    .venv/bin/python benchmarks/learning.py --threads 1                      # OMP_NUM_THREADS for the stages
    .venv/bin/python benchmarks/learning.py quickstart.yaml --precision fp32 bf16 --seeds 0 1 2
                                              # each recipe per precision and seed; mean and minimum
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import yaml
from recipe_runs import (add_variant_options, fmt, print_aligned, print_spread, recipe_cell, run_recipe, seconds_cell,
                         stage_seconds, variant_name, variant_overrides, variants)

REPO = Path(__file__).resolve().parents[1]
STAGE_SECONDS = 180.0
RECIPE_SECONDS = 300.0
REWARD_ACCURACY = 0.9
DPO_GAIN = 0.20
# a recipe that cannot reach its type's target says so here and in its comment (issue 13):
# bpe-lora-dpo's LoRA DPO reached at most pair accuracy 0.73 from 0.535 over 13 settings tried
RECIPE_DPO_GAIN = {"bpe-lora-dpo.yaml": 0.15}
GENERATED_SFT_GAIN = 0.05
COMPARISON_TYPES = ("reward", "preference", "rank")
SELF_TRAINING_GAIN = {"rejection_sampling": 0.10, "online_dpo": 0.10, "spin": 0.05}


def _rl_targets():
    """benchmarks/learning_rl.py, where the rl stages' targets live (None if absent)."""
    path = REPO / "benchmarks" / "learning_rl.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("learning_rl", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def recipes(names: list[str], types: list[str]) -> list[Path]:
    found = sorted((REPO / "pipelines").glob("*.yaml"))
    if names:
        found = [r for r in found if r.name in names or r.stem in names]
    if types:
        found = [r for r in found if set(types) & {s.get("type") for s in yaml.safe_load(r.read_text())["spec"]["stages"]}]
    return found


def rows_of(recipe: Path, document: dict, status: dict, rl) -> list[dict]:
    rows = []
    observed = {s["name"]: s for s in status.get("stages", [])}
    for stage in document["spec"]["stages"]:
        seen = observed.get(stage["name"], {})
        metrics = seen.get("metrics", {})
        generated = (stage.get("datasets") or {}).get("train", {}).get("fromStage")
        row = {"recipe": recipe.name, "stage": stage["name"], "type": stage["type"],
               "algorithm": stage.get("algorithm") or stage.get("method") or "-", "phase": seen.get("phase", "-"),
               "seconds": stage_seconds(seen), "from_generate": generated is not None, "records": metrics.get("records"),
               "before": metrics.get("accuracyBefore"), "after": metrics.get("accuracyAfter"),
               "loss_first": metrics.get("lossFirst"), "loss": metrics.get("loss"), "checks": []}
        if stage["type"] == "rl" and rl is not None:
            # the rl engineer's row and verdict, as learning_rl.py prints them
            rl_row = next(r for r in rl.rows_of(recipe, document, status) if r["stage"] == stage["name"])
            row.update(before=rl_row["before"], after=rl_row["after"], algorithm=rl_row["algorithm"], rl_row=rl_row)
        rows.append(row)
    return rows


def verdict(row: dict, rl) -> str:
    if "rl_row" in row:
        return rl.verdict(row["rl_row"])
    problems = []
    if row["phase"] != "Succeeded":
        problems.append(f"phase {row['phase']}")
    if row["seconds"] is None or row["seconds"] >= STAGE_SECONDS:
        problems.append(f"not under {STAGE_SECONDS:.0f} s")
    before, after = row["before"], row["after"]
    if row["type"] == "reward" and (after is None or after < REWARD_ACCURACY):
        problems.append(f"accuracy < {REWARD_ACCURACY}")
    dpo_gain = RECIPE_DPO_GAIN.get(row["recipe"], DPO_GAIN)
    if row["type"] == "preference" and row["algorithm"] == "dpo" and (before is None or after is None or after - before < dpo_gain):
        problems.append(f"gain < {dpo_gain}")
    if row["type"] == "sft" and row["from_generate"] and (before is None or after is None or after - before < GENERATED_SFT_GAIN):
        problems.append(f"gain < {GENERATED_SFT_GAIN}")
    if row["type"] == "generate" and not row["records"]:
        problems.append("no records")
    target = SELF_TRAINING_GAIN.get(row["type"])
    if target is not None and (before is None or after is None or after - before < target):
        problems.append(f"gain < {target}")
    if row["type"] in COMPARISON_TYPES and not (row["loss"] is not None and row["loss_first"] is not None
                                                and row["loss"] < row["loss_first"]):
        problems.append("loss did not fall")
    return "ok" if not problems else "; ".join(problems)


def print_table(rows: list[dict], rl) -> None:
    columns = ("recipe", "stage", "type", "algorithm", "before", "after", "change", "loss first->last", "seconds", "check")
    table = []
    for row in rows:
        change = row["after"] - row["before"] if row["before"] is not None and row["after"] is not None else None
        loss = f"{fmt(row['loss_first'])}->{fmt(row['loss'])}" if row["loss"] is not None else "-"
        table.append([recipe_cell(row), row["stage"], row["type"], row["algorithm"], fmt(row["before"]), fmt(row["after"]),
                      fmt(change), loss, seconds_cell(row["seconds"]), verdict(row, rl)])
    print_aligned(columns, table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*", help="recipe file names under pipelines/ (default: every one)")
    parser.add_argument("--types", nargs="*", default=[], help="only recipes with a stage of these types")
    parser.add_argument("--workdir", type=Path, help="where the runs go (default: a temporary directory)")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the stage processes (default: as inherited)")
    add_variant_options(parser)
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="alignops-learning-"))
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    rl = _rl_targets()
    rows: list[dict] = []
    chosen = recipes(args.recipes, args.types)
    slow = []
    runs = variants(args)
    for recipe in chosen:
        document = yaml.safe_load(recipe.read_text())
        for precision, seed in runs:
            name = variant_name(precision, seed)
            document, status, wall = run_recipe(recipe, workdir / recipe.stem / name, env,
                                                variant_overrides(document, precision, seed))
            if wall >= RECIPE_SECONDS:
                slow.append(f"{recipe.name} ({name})")
            print(f"{recipe.name} ({name}): {status.get('phase', 'no status')} in {wall:.0f} s"
                  f"{f' (not under {RECIPE_SECONDS:.0f} s)' if wall >= RECIPE_SECONDS else ''}", flush=True)
            rows += [{**row, "precision": precision, "seed": seed} for row in rows_of(recipe, document, status, rl)]
    print(f"\nbefore/after: held-out accuracy (sft, rejection_sampling, online_dpo, spin: greedy answers; reward: pairwise; "
          f"preference, rank: chosen log-prob above rejected); OMP_NUM_THREADS={env.get('OMP_NUM_THREADS', 'unset')}, {os.cpu_count()} CPUs\n")
    print_table(rows, rl)
    if len(runs) > 1 or runs[0] != (None, None):
        print("\nover seeds, per precision (met: seeds whose stage met its target)\n")
        print_spread(rows, lambda row: verdict(row, rl))
    failed = [r for r in rows if verdict(r, rl) != "ok"]
    print(f"\n{len(chosen)} recipes ({len(slow)} not under {RECIPE_SECONDS:.0f} s), {len(rows)} stages, {len(failed)} missing a target "
          f"(every stage < {STAGE_SECONDS:.0f} s; "
          f"reward accuracy >= {REWARD_ACCURACY}; dpo gain >= {DPO_GAIN}; sft on generated data gain >= {GENERATED_SFT_GAIN}; "
          f"reward/preference/rank loss falls; "
          f"gain >= {', '.join(f'{t} {g}' for t, g in SELF_TRAINING_GAIN.items())}); workdir {workdir}")
    return 1 if failed or slow or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
