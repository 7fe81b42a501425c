"""`precision: bf16` is honoured on the CPU: the quickstart, made tiny with `--set`, run with
`stages.*.hyperparameters.precision=bf16` trains under bf16 autocast in both stages (its losses and
the rl stage's log-probs differ from the default fp32 run's, by bf16 rounding, not by more). The
accuracy targets under bf16 live in benchmarks/learning_rl.py (--precision bf16 --seeds ...)."""

from __future__ import annotations

import json
import math

import pytest

from suite import REPO, run_cli

pytestmark = pytest.mark.slow

TINY = ["spec.model.architecture.hiddenSize=16", "spec.model.architecture.layers=1",
        "stages.sft.hyperparameters.maxSteps=3", "stages.sft.hyperparameters.batchSize=8",
        "stages.sft.hyperparameters.logEvery=1", "stages.sft.hyperparameters.evalSize=8",
        "stages.grpo.hyperparameters.rounds=1", "stages.grpo.hyperparameters.promptsPerRound=4",
        "stages.grpo.hyperparameters.samplesPerPrompt=2", "stages.grpo.hyperparameters.evalSize=8",
        "stages.grpo.hyperparameters.evalEvery=1"]


def _run(tmp_path, precision: str) -> dict[str, list[dict]]:
    sets = [*TINY, f"stages.*.hyperparameters.precision={precision}"]
    done = run_cli("run", str(REPO / "pipelines" / "quickstart.yaml"), "--workdir", str(tmp_path / precision),
                   *[arg for value in sets for arg in ("--set", value)])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    root = tmp_path / precision / "quickstart"
    return {stage: [json.loads(line) for line in (root / stage / "metrics.jsonl").read_text().splitlines()]
            for stage in ("sft", "grpo")}


def test_quickstart_with_precision_bf16_trains_under_bf16_autocast_on_the_cpu(tmp_path):
    fp32, bf16 = _run(tmp_path, "auto"), _run(tmp_path, "bf16")  # auto is fp32 on the CPU
    sft32 = [r["loss"] for r in fp32["sft"] if "loss" in r]
    sft16 = [r["loss"] for r in bf16["sft"] if "loss" in r]
    assert len(sft32) == len(sft16) == 3
    # the same weights and data at step 1: only the forward's rounding differs
    assert sft16[0] != sft32[0] and abs(sft16[0] - sft32[0]) < 0.05 * sft32[0]
    rl32 = next(r for r in fp32["grpo"] if "entropy" in r)
    rl16 = next(r for r in bf16["grpo"] if "entropy" in r)
    # the rl stage's log-probs (its entropy) come from bf16 forwards too
    assert math.isfinite(rl16["entropy"]) and rl16["entropy"] != rl32["entropy"]
    assert abs(rl16["entropy"] - rl32["entropy"]) < 0.1 * rl32["entropy"]
