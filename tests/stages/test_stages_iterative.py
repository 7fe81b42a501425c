"""The self-training stages (rejection_sampling, online_dpo, spin) end to end on tiny models:

- the stages of every recipe in pipelines/ with one of them run through `alignops run`, made tiny
  with `--set` (the learning targets are benchmarks/learning.py's): each stage succeeds and reports
  held-out accuracy before and after, rounds, steps and what it trained on;
- the LLM-judge path runs with a tiny judge taught to answer "A": judge prompts built from the
  template, answers parsed into pairs, the answers kept in the round's judgements.jsonl; a pattern
  that no answer matches stops the stage with exit 78 and says what the judge answered;
- an online_dpo run killed mid-round (SIGKILL) resumes at its last committed round and ends with
  exactly the weights and figures of an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alignops.api import parse_job
from alignops.api.stages import STAGE_TYPES
from alignops.planner import Defaults, initial_status, resolve_run
from rl.rl_stage_helpers import REWARDS, metrics_records, result, run_stage, same_weights
from suite import PIPELINES, run_cli

pytestmark = pytest.mark.slow

ITERATIVE_TYPES = {"rejection_sampling", "online_dpo", "spin"}
RECIPES = [p for p in PIPELINES if ITERATIVE_TYPES & {s["type"] for s in yaml.safe_load(p.read_text())["spec"]["stages"]}]
TINY_TRAINING = {"maxSteps": 3, "batchSize": 8, "evalSize": 8, "logEvery": 1}
TINY_ROUNDS = {"rounds": 2, "promptsPerRound": 4, "samplesPerPrompt": 2, "maxNewTokens": 4, "evalSize": 8, "batchSize": 4,
               "stepsPerRound": 1, "evalEvery": 1}
TINY_MODEL = {"hiddenSize": 16, "layers": 1, "heads": 2, "maxPositions": 64, "seed": 0}


def test_every_self_training_method_has_a_recipe():
    methods = {(s["type"], s.get("algorithm") or STAGE_TYPES[s["type"]].default_algorithm) for p in RECIPES
               for s in yaml.safe_load(p.read_text())["spec"]["stages"] if s["type"] in ITERATIVE_TYPES}
    assert {("rejection_sampling", "raft"), ("rejection_sampling", "rest"), ("online_dpo", "dpo"), ("spin", "dpo")} <= methods, methods
    assert {p.name for p in RECIPES} >= {"raft.yaml", "rest.yaml", "oaif.yaml", "spin.yaml"}


def _sft_apart_from_length(stage: dict) -> dict:
    """An SFT stage without what the recipes tune per method (how long it trains, which the tiny
    overrides set anyway): spin's starts from a longer SFT than raft's."""
    hyperparameters = {k: v for k, v in stage.get("hyperparameters", {}).items() if k not in TINY_TRAINING}
    return {**stage, "hyperparameters": hyperparameters}


def _recipes_as_one_job() -> dict:
    """The recipes' stages as one pipeline (one SFT stage feeding every other), so that CI pays for
    one SFT run and one `alignops run` instead of one per recipe. Each recipe's own manifest is
    validated whole by tests/core; here its stages run."""
    first = yaml.safe_load(RECIPES[0].read_text())
    stages, names = [], set()
    for recipe in RECIPES:
        for stage in yaml.safe_load(recipe.read_text())["spec"]["stages"]:
            if stage["type"] == "sft":
                assert _sft_apart_from_length(stage) == _sft_apart_from_length(first["spec"]["stages"][0]), \
                    f"{recipe.name}: its SFT stage differs from {RECIPES[0].name}'s"
                if stages:
                    continue
            assert stage["name"] not in names, f"{recipe.name}: stage name {stage['name']} is taken by another recipe"
            names.add(stage["name"])
            stages.append(stage)
    return {**first, "metadata": {"name": "recipes"}, "spec": {**first["spec"], "stages": stages}}


def _overrides(document: dict) -> list[str]:
    values = [f"spec.model.architecture.{key}={value}" for key, value in TINY_MODEL.items()]
    for stage in document["spec"]["stages"]:
        tiny = TINY_ROUNDS if stage["type"] in ITERATIVE_TYPES else TINY_TRAINING
        values += [f"stages.{stage['name']}.hyperparameters.{key}={value}" for key, value in tiny.items()]
    return [arg for value in values for arg in ("--set", value)]


def test_every_recipe_stage_runs_small(tmp_path):
    document = _recipes_as_one_job()
    manifest = tmp_path / "recipes.yaml"
    manifest.write_text(yaml.safe_dump(document))
    done = run_cli("run", str(manifest), "--workdir", str(tmp_path), *_overrides(document))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    status = json.loads((tmp_path / "recipes" / "status.json").read_text())["status"]
    assert status["phase"] == "Succeeded"
    for stage in document["spec"]["stages"]:
        observed = next(s for s in status["stages"] if s["name"] == stage["name"])
        assert observed["phase"] == "Succeeded"
        if stage["type"] not in ITERATIVE_TYPES:
            continue
        metrics = observed["metrics"]
        assert {"accuracyBefore", "accuracyAfter", "rounds", "steps"} <= set(metrics), sorted(metrics)
        assert metrics["rounds"] == 2 and 0 <= metrics["accuracyAfter"] <= 1
        assert observed["checkpointUri"].endswith(f"/round-2/checkpoint-{int(metrics['steps'])}")
        records = metrics_records(tmp_path / "recipes" / stage["name"] / "metrics.jsonl")
        assert [r["round"] for r in records] == [1, 2]
        # what each round trained on is in its record (kept responses or pairs), finite where trained
        trained_on = "kept" if stage["type"] == "rejection_sampling" else "pairs"
        assert all(trained_on in r for r in records)
        assert all(math.isfinite(r["loss"]) for r in records if "loss" in r)


def _judge_data(path: Path) -> None:
    """Chat records teaching a judge to answer "A" to prompts shaped like JUDGE_TEMPLATE's."""
    lines = []
    for a in range(32):
        content = JUDGE_TEMPLATE.format(prompt=f"{a}+1=", response_a=str(a + 1), response_b=str(a + 2))
        lines.append(json.dumps({"messages": [{"role": "user", "content": content}, {"role": "assistant", "content": "A"}]}))
    path.write_text("\n".join(lines) + "\n")


JUDGE_TEMPLATE = "{prompt}{response_a}|{response_b}?"


def _judge_job(data: Path) -> dict:
    judge = {"fromStage": "judge", "template": JUDGE_TEMPLATE, "maxNewTokens": 2}
    rounds = {**TINY_ROUNDS, "rounds": 1, "samplesPerPrompt": 4}
    data_train = {"train": {"generator": "arithmetic", "size": 16, "seed": 2}}
    return {
        "apiVersion": "alignops.io/v1alpha1", "kind": "AlignmentJob", "metadata": {"name": "judged"},
        "spec": {"model": {"architecture": TINY_MODEL}, "stages": [
            {"name": "judge", "type": "sft", "datasets": {"train": {"uri": f"file://{data}"}},
             "hyperparameters": {"maxSteps": 40, "batchSize": 8, "learningRate": 0.01, "warmupSteps": 0, "maxLength": 64,
                                 "evalSize": 4, "logEvery": 10}},
            {"name": "odpo", "type": "online_dpo", "judge": judge, "datasets": data_train, "hyperparameters": rounds},
            # an answer pattern nothing matches: the stage stops at once and says what the judge answered
            {"name": "unread", "type": "online_dpo", "judge": {**judge, "answerPattern": r"^verdict: ([AB])"},
             "datasets": data_train, "hyperparameters": rounds},
        ]},
    }


def test_an_llm_judge_labels_the_pairs_online_dpo_trains_on(tmp_path):
    _judge_data(tmp_path / "judge.jsonl")
    manifest = tmp_path / "judged.yaml"
    manifest.write_text(yaml.safe_dump(_judge_job(tmp_path / "judge.jsonl")))
    done = run_cli("run", str(manifest), "--workdir", str(tmp_path / "w"))
    status = json.loads((tmp_path / "w" / "judged" / "status.json").read_text())["status"]
    stages = {s["name"]: s for s in status["stages"]}
    assert stages["odpo"]["phase"] == "Succeeded", done.stdout[-3000:] + done.stderr[-3000:]

    # 4 prompts x 4 responses: 2 consecutive pairs per prompt, 8 judge prompts, each answered "A"
    judgements = [json.loads(line) for line in
                  (tmp_path / "w" / "default" / "judged" / "odpo" / "round-1" / "judgements.jsonl").read_text().splitlines()]
    assert len(judgements) == 8
    assert all(j["answers"][0].strip() == "A" and j["winner"] == "A" and j["parsed"] for j in judgements)
    metrics = stages["odpo"]["metrics"]
    assert metrics["pairs"] == 8 and metrics["judgeUnparsed"] == 0 and metrics["judgeInconsistent"] == 0
    record = metrics_records(tmp_path / "w" / "judged" / "odpo" / "metrics.jsonl")[-1]
    assert record["pairs"] == 8 and math.isfinite(record["loss"]) and record["ties"] == 0
    # the chosen side of each pair is response A: the first of the two sampled
    rollouts = [json.loads(line) for line in
                (tmp_path / "w" / "default" / "judged" / "odpo" / "round-1" / "rollouts.jsonl").read_text().splitlines()]
    assert [r["score"] for r in rollouts] == [1.0, 0.0] * 8

    assert done.returncode != 0 and status["phase"] == "Failed"
    unread = stages["unread"]
    assert unread["phase"] == "Failed" and unread["reason"] == "ConfigurationError"
    # the message quotes what the judge said (the taught "A", before the pattern's "verdict: ")
    assert "none of the judge's 8 answers matched judge.answerPattern" in unread["message"]
    assert "its first answer was 'A" in unread["message"]
    assert unread["attempts"] == 1  # a configuration error is not retried


def _odpo_job(rounds: int = 3) -> dict:
    """A tiny online_dpo stage judged by rewards that vary even for an untrained model (digits, and
    shorter is better), so every round has pairs and moves the weights."""
    hp = {**TINY_ROUNDS, "rounds": rounds, "samplesPerPrompt": 4, "stepsPerRound": 2, "learningRate": 0.01,
          "warmupSteps": 0, "rewards": REWARDS}
    return {"apiVersion": "alignops.io/v1alpha1", "kind": "AlignmentJob", "metadata": {"name": "odpo-demo"},
            "spec": {"model": {"architecture": TINY_MODEL}, "stages": [
                {"name": "rl", "type": "online_dpo", "datasets": {"train": {"generator": "arithmetic", "size": 32}},
                 "hyperparameters": hp}]}}


_KILL_AT_STEP = """
import os, signal, sys
from alignops.workloads.training import loop
from alignops.workloads.entrypoint import main
target = int(sys.argv[2])
original = loop.TrainLoop.optimizer_step

def optimizer_step(self, *args, **kwargs):
    if self.state.step + 1 == target:
        # after the last round's checkpoint has landed: commits upload beside training, and one
        # still in flight at a SIGKILL is lost whole (its manifest is written last)
        self.ctx.commits.wait()
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, *args, **kwargs)

loop.TrainLoop.optimizer_step = optimizer_step
sys.exit(main([sys.argv[1]]))
"""


def _config(document: dict, storage: Path, directory: Path) -> Path:
    job = parse_job(document)
    config = resolve_run(job, initial_status(job), "rl", 1, Defaults(storage_uri=f"file://{storage}"))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "run.json").write_text(config.to_json())
    return directory / "run.json"


def test_a_killed_run_resumes_at_its_last_committed_round_and_ends_where_an_uninterrupted_one_does(tmp_path):
    straight_dir, killed_dir = tmp_path / "straight", tmp_path / "killed"
    done = run_stage(_config(_odpo_job(), straight_dir / "store", straight_dir), straight_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = result(straight_dir)
    assert expected["checkpointUri"].endswith("rl/round-3/checkpoint-6") and expected["metrics"]["pairs"] > 0

    config = _config(_odpo_job(), killed_dir / "store", killed_dir)
    env = {**os.environ, "ALIGNOPS_RESULT_PATH": str(killed_dir / "result.json"),
           "ALIGNOPS_METRICS_LOG": str(killed_dir / "metrics.jsonl")}
    # killed before optimiser step 4: round 2's rollouts are committed, its checkpoint is not
    killed = subprocess.run([sys.executable, "-c", _KILL_AT_STEP, str(config), "4"], env=env, capture_output=True, text=True,
                            timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    stage_root = killed_dir / "store" / "default" / "odpo-demo" / "rl"
    assert sorted(p.name for p in stage_root.glob("round-*/checkpoint-*")) == ["checkpoint-2"]
    assert (stage_root / "round-2" / "rollout_stats.json").exists()
    round_2_rollouts = (stage_root / "round-2" / "rollouts.jsonl").stat().st_mtime_ns

    resumed = run_stage(config, killed_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["round"] for r in metrics_records(killed_dir / "metrics.jsonl")] == [1, 2, 3]
    assert (stage_root / "round-2" / "rollouts.jsonl").stat().st_mtime_ns == round_2_rollouts  # reused, not resampled
    got = result(killed_dir)
    assert got["checkpointUri"].endswith("rl/round-3/checkpoint-6")
    assert same_weights(got["checkpointUri"], expected["checkpointUri"])
    assert got["metrics"] == pytest.approx(expected["metrics"], abs=1e-6)
