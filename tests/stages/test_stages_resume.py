"""A preference stage stopped by SIGTERM commits a checkpoint, exits 143, and resumes to exactly
the weights and figures of an uninterrupted run: the SFT stage's TrainLoop code path (model,
optimizer, scheduler, RNG and data position), plus a reference whose cached log-probs do not depend
on when they were computed."""

import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignops.contract import EXIT_OK, EXIT_SIGTERM
from alignops.workloads import context

# 32 pairs, batch 8: 4 steps per epoch; 12 steps = 3 epochs
STAGE = {
    "name": "dpo", "type": "preference", "algorithm": "dpo",
    "datasets": {"train": {"generator": "arithmetic", "size": 32, "seed": 5}},
    "hyperparameters": {"maxSteps": 12, "batchSize": 8, "learningRate": 0.01, "warmupSteps": 2,
                        "checkpointEvery": 100, "logEvery": 1, "evalSize": 16, "maxLength": 16},
}


def final_weights(root: Path) -> dict[str, torch.Tensor]:
    directory = root / "default" / "tiny" / "dpo" / "checkpoint-12"
    return load_file(directory / "model.safetensors")


@pytest.mark.slow
def test_sigterm_then_resume_is_exact(stage_run, tmp_path, monkeypatch):
    code, straight = stage_run(STAGE, tmp_path / "a")
    assert code == EXIT_OK
    # reference log-probs computed once: 32 pairs x 2 responses over 3 epochs
    assert straight["metrics"]["referenceSequencesScored"] == 64

    log = context.MetricsSink.log

    def stop_after_step_5(self, record):
        log(self, record)
        if record.get("step") == 5 and "loss" in record:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler make_context installed sets ctx.stop

    monkeypatch.setattr(context.MetricsSink, "log", stop_after_step_5)
    code, stopped = stage_run(STAGE, tmp_path / "b")
    assert code == EXIT_SIGTERM and "stopped at step 5" in stopped["message"]
    assert (tmp_path / "b" / "default" / "tiny" / "dpo" / "checkpoint-5" / "manifest.json").exists()

    monkeypatch.setattr(context.MetricsSink, "log", log)
    code, resumed = stage_run(STAGE, tmp_path / "b")
    assert code == EXIT_OK

    a, b = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # figures before training come from the checkpoint's stage record, the rest from equal weights
    assert resumed["metrics"] == {**straight["metrics"], "referenceSequencesScored": resumed["metrics"]["referenceSequencesScored"]}
