"""Every recipe in pipelines/ with a reward, preference or rank stage runs end to end with
`alignops run` (the local executor: the planner's stage runs as `python -m alignops.workloads`
processes), made CI-sized by overrides: a smaller model, a few SFT steps, and a comparison stage
that passes 64 examples several times, so that its own loss must fall. The learning thresholds
(reward accuracy >= 0.9, DPO +0.20) are the benchmark's business: benchmarks/learning.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alignops.api.validation import load_job

ROOT = Path(__file__).resolve().parents[2]
COMPARISON_TYPES = {"reward", "preference", "rank"}
ROUND_TYPES = {"rl", "rejection_sampling", "online_dpo", "spin"}  # stages that these overrides would not shrink


def comparison_recipes() -> list[Path]:
    """Recipes with a comparison stage; those with an rl stage too (ppo-instructgpt) run in
    tests/rl/test_rl_recipes.py, those with a self-training stage (oaif) in
    tests/stages/test_stages_iterative.py, whose overrides also shrink those stages."""
    def types(p: Path) -> set:
        return {s.get("type") for s in yaml.safe_load(p.read_text())["spec"]["stages"]}

    # recipes with a generate stage run in tests/workloads/test_workloads_generate.py (their tiny
    # models write too little through the parsers for a comparison stage to learn from)
    return sorted(p for p in (ROOT / "pipelines").glob("*.yaml")
                  if COMPARISON_TYPES & types(p) and not (ROUND_TYPES | {"generate"}) & types(p))


SMALL = [
    "spec.model.architecture.hiddenSize=32", "spec.model.architecture.layers=1", "spec.model.architecture.heads=2",
    "stages.*.hyperparameters.evalSize=32", "stages.*.hyperparameters.logEvery=1",
    "stages.*.hyperparameters.checkpointEvery=1000", "stages.*.hyperparameters.warmupSteps=2",
    "stages.sft.hyperparameters.maxSteps=5",
]


def comparison_overrides(stage) -> list[str]:
    # 64 examples in batches of 16 for 24 steps: 6 passes, so the loss falls even on a tiny model
    # (a preference stage on rankings trains on all 6 pairs of each: 16 rankings give 96 pairs)
    size = 16 if stage.type == "preference" and stage.datasets.train.format == "rankings" else 64
    name = stage.name
    return [f"stages.{name}.datasets.train.size={size}", f"stages.{name}.hyperparameters.batchSize=16",
            f"stages.{name}.hyperparameters.maxSteps=24", f"stages.{name}.hyperparameters.learningRate=0.01"]


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", comparison_recipes(), ids=lambda p: p.stem)
def test_recipe_runs_and_its_comparison_stage_learns(recipe: Path, tmp_path: Path):
    job = load_job(recipe)
    stages = [s for s in job.spec.stages if s.type in COMPARISON_TYPES]
    sets = SMALL + [o for s in stages for o in comparison_overrides(s)]
    command = [sys.executable, "-m", "alignops.cli.main", "run", str(recipe), "--workdir", str(tmp_path)]
    for assignment in sets:
        command += ["--set", assignment]
    # one thread per stage process: on a shared 2-core machine a tiny model runs several times
    # faster than with two contending threads
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**_env(), "OMP_NUM_THREADS": "1"})
    status = json.loads((tmp_path / job.name / "status.json").read_text())["status"]
    assert done.returncode == 0 and status["phase"] == "Succeeded", done.stdout[-3000:] + done.stderr[-3000:]

    observed = {s["name"]: s for s in status["stages"]}
    for stage in stages:
        metrics = observed[stage.name]["metrics"]
        for key in ("accuracyBefore", "accuracyAfter", "loss", "lossFirst"):
            assert key in metrics, f"{stage.name}: {key} missing from {sorted(metrics)}"
        assert 0.0 <= metrics["accuracyBefore"] <= 1.0
        records = [json.loads(line) for line in (tmp_path / job.name / stage.name / "metrics.jsonl").read_text().splitlines()]
        losses = [r["loss"] for r in records if "loss" in r]
        assert len(losses) == 24
        # the status figures are the run's own (rounded to 6 decimals): first and last logged loss,
        # and the held-out accuracy of the record that closes the log
        assert metrics["lossFirst"] == pytest.approx(losses[0], abs=1e-6), stage.name
        assert metrics["loss"] == pytest.approx(losses[-1], abs=1e-6), stage.name
        assert metrics["accuracyAfter"] == pytest.approx(records[-1]["accuracy"], abs=1e-6), stage.name
        # the mean of the last 5 steps' losses below the mean of the first 5 (single steps are noisy)
        assert mean(losses[-5:]) < mean(losses[:5]), f"{stage.name}: loss did not fall: {losses}"

    if any(s.type == "reward" for s in stages):
        _check_reward_model_loads_in_transformers(tmp_path, job, next(s for s in stages if s.type == "reward"), observed)


def _check_reward_model_loads_in_transformers(tmp_path, job, stage, observed):
    """The reward checkpoint is a plain HF sequence classifier: load it as it is and score."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    directory = Path(observed[stage.name]["checkpointUri"].removeprefix("file://"))
    model = AutoModelForSequenceClassification.from_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert model.config.architectures == ["LlamaForSequenceClassification"] and model.config.num_labels == 1
    assert model.config.pad_token_id == tokenizer.pad_token_id
    batch = tokenizer(["1+1=2", "1+1=3"], return_tensors="pt")
    with torch.no_grad():
        assert model(**batch).logits.shape == (2, 1)


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)
