"""Every recipe in pipelines/, made small with ``--set`` overrides, run with ``alignops run``; prints
(or writes with ``--out``) each stage's status metrics and its logged per-step loss and reward, less
anything measured in seconds. The runs are deterministic, so two commits whose computation is the
same give the same fingerprint: ``--compare OLD.json`` lists every figure that moved.

    python benchmarks/recipe_fingerprint.py --out before.json        # on the old commit
    python benchmarks/recipe_fingerprint.py --compare before.json    # on the new one
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TIMED = ("time", "second", "step_time")  # wall-clock figures differ between runs by nature
TRAINING = {"maxSteps": 12, "batchSize": 16, "evalSize": 32, "logEvery": 1, "checkpointEvery": 1000, "warmupSteps": 2}
# SFT long enough that the policy answers some prompts right: rl rounds then see non-zero rewards
SFT = {**TRAINING, "maxSteps": 300, "batchSize": 32}
RL = {"rounds": 3, "promptsPerRound": 16, "samplesPerPrompt": 4, "maxNewTokens": 6, "evalSize": 16, "batchSize": 8,
      "miniBatches": 2, "evalEvery": 1}
# the stages that train in rounds on their own samples (rejection_sampling, online_dpo, spin)
ROUNDS = {**{k: v for k, v in RL.items() if k != "miniBatches"}, "stepsPerRound": 2}


def overrides(document: dict) -> list[str]:
    values = []
    for stage in document["spec"]["stages"]:
        chosen = {"rl": RL, "sft": SFT, "rejection_sampling": ROUNDS, "online_dpo": ROUNDS, "spin": ROUNDS}.get(stage["type"], TRAINING)
        for key, value in chosen.items():
            values.append(f"stages.{stage['name']}.hyperparameters.{key}={value}")
        train = (stage.get("datasets") or {}).get("train") or {}
        if "generator" in train and stage["type"] in ("reward", "preference", "rank"):
            values.append(f"stages.{stage['name']}.datasets.train.size={16 if train.get('format') == 'rankings' else 96}")
    return [arg for value in values for arg in ("--set", value)]


def untimed(record: dict) -> dict:
    return {k: v for k, v in record.items() if isinstance(v, (int, float)) and not any(t in k for t in TIMED)}


def fingerprint(recipe: Path, workdir: Path) -> dict:
    document = yaml.safe_load(recipe.read_text())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "alignops.cli.main", "run", str(recipe), "--workdir", str(workdir),
                           *overrides(document)], capture_output=True, text=True, env=env)
    job = workdir / document["metadata"]["name"]
    status = json.loads((job / "status.json").read_text())["status"] if (job / "status.json").exists() else {}
    out = {"exit": done.returncode, "phase": status.get("phase"), "stages": {}}
    for stage in status.get("stages", []):
        log = job / stage["name"] / "metrics.jsonl"
        records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        out["stages"][stage["name"]] = {
            "metrics": untimed(stage.get("metrics", {})),
            "log": [untimed(r) for r in records],
        }
    if done.returncode != 0:
        out["tail"] = done.stderr[-2000:]
    return out


def differences(old, new, path="") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new)) for d in differences(old.get(k), new.get(k), f"{path}.{k}")]
    if isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            return [f"{path}: {len(old)} records -> {len(new)}"]
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in differences(a, b, f"{path}[{i}]")]
    if isinstance(old, float) and isinstance(new, float) and (old == new or (math.isnan(old) and math.isnan(new))):
        return []
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--compare", type=Path)
    parser.add_argument("recipes", nargs="*", help="recipe names (default: every one in pipelines/)")
    args = parser.parse_args()
    recipes = sorted((ROOT / "pipelines").glob("*.yaml"))
    if args.recipes:
        recipes = [r for r in recipes if r.stem in args.recipes]
    result = {}
    for recipe in recipes:
        with tempfile.TemporaryDirectory() as workdir:
            result[recipe.stem] = fingerprint(recipe, Path(workdir))
        print(f"{recipe.stem:20s} exit {result[recipe.stem]['exit']}", file=sys.stderr, flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    if args.compare:
        old = json.loads(args.compare.read_text())
        moved = differences({k: old.get(k) for k in result}, result)
        print(f"{len(moved)} figures differ" + (":" if moved else ""))
        for line in moved[:200]:
            print("  " + line)
        return 1 if moved else 0
    if not args.out:
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
