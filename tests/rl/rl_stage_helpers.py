"""Small rl pipelines and ways to run (and kill) their stage runs, for the rl stage tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from alignops.api import parse_job
from alignops.planner import Defaults, initial_status, resolve_run

# A tiny policy and rewards that vary even for an untrained model (digits anywhere, and shorter is
# better), so every round has non-zero advantages and really moves the weights.
REWARDS = [{"name": "regex", "options": {"pattern": r"\d"}}, {"name": "length_penalty", "weight": 0.5}]


def rl_job(name: str = "rl-demo", algorithm: str = "grpo", **hyperparameters) -> dict:
    hp = {"rounds": 2, "promptsPerRound": 4, "samplesPerPrompt": 4, "maxNewTokens": 4, "evalSize": 8, "batchSize": 4,
          "miniBatches": 2, "learningRate": 0.01, "warmupSteps": 0, "rewards": REWARDS, "kl": {"beta": 0.1}, **hyperparameters}
    return {
        "apiVersion": "alignops.io/v1alpha1", "kind": "AlignmentJob", "metadata": {"name": name},
        "spec": {
            "model": {"architecture": {"hiddenSize": 32, "layers": 1, "heads": 2, "maxPositions": 32, "seed": 1}},
            "stages": [{"name": "rl", "type": "rl", "algorithm": algorithm, "datasets": {"train": {"generator": "arithmetic", "size": 64}},
                        "hyperparameters": hp}],
        },
    }


def write_config(document: dict, storage: Path, directory: Path, role: str = "all", round_: int | None = None) -> Path:
    """The resolved config of the job's rl stage (what the planner hands a pod), as a file."""
    job = parse_job(document)
    config = resolve_run(job, initial_status(job), "rl", 1, Defaults(storage_uri=f"file://{storage}"), role, round_)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"run-{role}-{round_}.json"
    path.write_text(config.to_json())
    return path


# Runs the entrypoint after arranging for the process to be signalled at the n-th optimiser step of
# a round (SIGKILL: no chance to clean up; SIGTERM: the stage's own stop path).
_KILLER = """
import os, signal, sys
from alignops.workloads.rl import update as rl_update
from alignops.workloads import entrypoint
target_round, target_step, signame = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
calls = {"n": 0}
original = rl_update.PolicyUpdate.run
contexts, make_context = [], entrypoint.make_context
entrypoint.make_context = lambda *args: contexts.append(make_context(*args)) or contexts[-1]

def run(self, t, round_, kl_coef, should_stop):
    def check():
        if round_ == target_round:
            calls["n"] += 1
            if calls["n"] == target_step:
                # after the last round's checkpoint has landed: commits upload beside training, and
                # one still in flight at a SIGKILL is lost whole (its manifest is written last)
                contexts[-1].commits.wait()
                os.kill(os.getpid(), getattr(signal, signame))
        should_stop()
    return original(self, t, round_, kl_coef, check)

rl_update.PolicyUpdate.run = run
sys.exit(entrypoint.main([sys.argv[1]]))
"""


def run_stage(config: Path, workdir: Path, kill_at: tuple[int, int, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m alignops.workloads CONFIG`` (optionally signalled at (round, step, SIGNAME))."""
    env = {**os.environ, "ALIGNOPS_RESULT_PATH": str(workdir / "result.json"), "ALIGNOPS_METRICS_LOG": str(workdir / "metrics.jsonl")}
    env.pop("ALIGNOPS_METRICS_PORT", None)
    if kill_at is None:
        args = [sys.executable, "-m", "alignops.workloads", str(config)]
    else:
        args = [sys.executable, "-c", _KILLER, str(config), *map(str, kill_at)]
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)


def result(workdir: Path) -> dict:
    return json.loads((workdir / "result.json").read_text())


def checkpoint_dir(uri: str) -> Path:
    assert uri.startswith("file://"), uri
    return Path(uri[len("file://") :])


def weights(uri: str) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint_dir(uri) / "model.safetensors"))


def same_weights(a: str, b: str) -> bool:
    first, second = weights(a), weights(b)
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def metrics_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
