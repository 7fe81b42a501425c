"""Every recipe with an `rl` stage runs end to end with `alignops run`, made tiny with `--set`
overrides (the learning targets themselves are checked by benchmarks/learning_rl.py): each stage
succeeds, the rl stage reports its status keys and a finite loss."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from suite import PIPELINES, run_cli

pytestmark = pytest.mark.slow

RL_RECIPES = [p for p in PIPELINES if any(s["type"] == "rl" for s in yaml.safe_load(p.read_text())["spec"]["stages"])]
STATUS_KEYS = {"accuracyBefore", "accuracyAfter", "rewardFirst", "rewardLast", "loss", "rounds", "steps"}
TINY_TRAINING = {"maxSteps": 3, "batchSize": 8, "evalSize": 8, "logEvery": 1}
TINY_RL = {"rounds": 2, "promptsPerRound": 4, "samplesPerPrompt": 2, "maxNewTokens": 4, "evalSize": 8, "batchSize": 4,
           "miniBatches": 2, "evalEvery": 1}


def _overrides(document: dict) -> list[str]:
    """--set arguments making the model and every stage tiny."""
    values = ["spec.model.architecture.hiddenSize=16", "spec.model.architecture.layers=1"]
    for stage in document["spec"]["stages"]:
        tiny = TINY_RL if stage["type"] == "rl" else TINY_TRAINING
        values += [f"stages.{stage['name']}.hyperparameters.{key}={value}" for key, value in tiny.items()]
    return [arg for value in values for arg in ("--set", value)]


def test_every_rl_algorithm_has_a_recipe():
    algorithms = {s.get("algorithm", "grpo") for p in RL_RECIPES for s in yaml.safe_load(p.read_text())["spec"]["stages"]
                  if s["type"] == "rl"}
    assert {"ppo", "grpo", "rloo", "reinforce_pp", "remax", "apa", "p3o"} <= algorithms
    placements = {s.get("hyperparameters", {}).get("placement", "colocated") for p in RL_RECIPES
                  for s in yaml.safe_load(p.read_text())["spec"]["stages"] if s["type"] == "rl"}
    assert placements == {"colocated", "split"}


@pytest.mark.parametrize("recipe", RL_RECIPES, ids=[p.name for p in RL_RECIPES])
def test_recipe_runs_small(recipe, tmp_path):
    document = yaml.safe_load(recipe.read_text())
    done = run_cli("run", str(recipe), "--workdir", str(tmp_path), *_overrides(document))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    status = json.loads((tmp_path / document["metadata"]["name"] / "status.json").read_text())["status"]
    assert status["phase"] == "Succeeded"
    for stage in document["spec"]["stages"]:
        observed = next(s for s in status["stages"] if s["name"] == stage["name"])
        assert observed["phase"] == "Succeeded"
        if stage["type"] == "rl":
            metrics = observed["metrics"]
            assert STATUS_KEYS <= set(metrics), sorted(metrics)
            assert math.isfinite(metrics["loss"])
            assert metrics["rounds"] == 2
            assert observed["checkpointUri"].endswith(f"/round-2/checkpoint-{int(metrics['steps'])}")
