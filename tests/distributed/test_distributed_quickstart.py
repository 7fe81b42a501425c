"""The quickstart on two processes through `alignops run`, as the issue asks: its SFT stage under
the default ZeRO-2, and both stages (the GRPO one with its frozen reference sharded) under ZeRO-3."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SMALL = ["stages.sft.hyperparameters.maxSteps=20", "stages.sft.hyperparameters.evalSize=20",
         "stages.grpo.hyperparameters.rounds=2", "stages.grpo.hyperparameters.evalSize=20"]


@pytest.mark.parametrize("extra, world", [
    (["stages.sft.resources.gpus=2"], {"sft": 2, "grpo": 1}),
    (["stages.sft.resources.gpus=2", "stages.sft.distributed.zeroStage=3",
      "stages.grpo.resources.gpus=2", "stages.grpo.distributed.zeroStage=3"], {"sft": 2, "grpo": 2}),
], ids=["sft-zero2", "both-zero3"])
def test_quickstart_runs_on_two_processes(tmp_path, extra, world):
    sets = [arg for item in SMALL + extra for arg in ("--set", item)]
    done = subprocess.run([sys.executable, "-m", "alignops.cli.main", "run", str(REPO / "pipelines/quickstart.yaml"),
                           "--workdir", str(tmp_path), *sets], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    status = json.loads((tmp_path / "quickstart/status.json").read_text())["status"]
    assert status["phase"] == "Succeeded"
    stages = {s["name"]: s for s in status["stages"]}
    assert {name: stages[name]["metrics"]["worldSize"] for name in world} == world
    # the SFT stage learned on its processes (its global loss fell), and its output fed the GRPO stage
    records = [json.loads(line) for line in (tmp_path / "quickstart/sft/metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < 0.9 * losses[0], losses
    log = (tmp_path / "quickstart/sft/attempt-1.log").read_text()
    assert "launching 2 processes" in log
