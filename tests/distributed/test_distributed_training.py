"""Training on several processes (DeepSpeed ZeRO over gloo on the CPU, 2 processes): the same losses
as one process at every logged step, one Hugging Face checkpoint whatever the sharding, a SIGTERM
that stops every process at one step, and resumes at the same and at another process count.

Runs are real stage runs (``python -m alignops.workloads CONFIG.json``, which launches the workers
itself), shared between tests through a module fixture, each small: 100 steps of a 2-layer model.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from alignops.api import parse_job
from alignops.planner import Defaults, initial_status, resolve_run
from alignops.demo import generate
from alignops.workloads.data.sft import tokenize_sft
from alignops.workloads.evaluation.generation import sft_eval_loss

pytestmark = pytest.mark.slow

ARCH = {"hiddenSize": 32, "layers": 2, "heads": 2, "maxPositions": 32, "seed": 0}
COMMON = {"batchSize": 8, "maxSteps": 100, "logEvery": 10, "checkpointEvery": 50, "maxLength": 24, "evalSize": 16,
          "warmupSteps": 5, "lrScheduler": "constant"}
STAGES = {
    "sft": {"name": "sft", "type": "sft", "datasets": {"train": {"generator": "arithmetic", "size": 800, "seed": 1}},
            "hyperparameters": {**COMMON, "learningRate": 0.003}},
    "dpo": {"name": "dpo", "type": "preference", "algorithm": "dpo",
            "datasets": {"train": {"generator": "arithmetic", "size": 400, "seed": 3, "format": "pairs"}},
            "hyperparameters": {**COMMON, "learningRate": 0.001, "beta": 0.1}},
}
RELATIVE = 1e-3  # fp32 over 100 steps: two float orders of the same sums


@dataclass
class Run:
    code: int
    stderr: str
    metrics: list[dict]
    result: dict
    store: Path

    def losses(self) -> dict[int, float]:
        return {r["step"]: r["loss"] for r in self.metrics if "loss" in r}


def _config(tmp: Path, stage: str, store: Path, gpus: int, zero: int | None, tag: str) -> Path:
    spec = json.loads(json.dumps(STAGES[stage]))
    spec["resources"] = {"gpus": gpus}
    if zero is not None:
        spec["distributed"] = {"zeroStage": zero}
    job = parse_job({"apiVersion": "alignops.io/v1alpha1", "kind": "AlignmentJob", "metadata": {"name": "dist"},
                     "spec": {"model": {"architecture": ARCH}, "stages": [spec]}})
    config = resolve_run(job, initial_status(job), stage, 1, Defaults(storage_uri=f"file://{store}"))
    path = tmp / f"config-{tag}.json"
    path.write_text(config.to_json())
    return path


def _start(tmp: Path, config: Path, tag: str) -> subprocess.Popen:
    env = {**os.environ, "ALIGNOPS_RESULT_PATH": str(tmp / f"result-{tag}.json"),
           "ALIGNOPS_METRICS_LOG": str(tmp / f"metrics-{tag}.jsonl"), "ALIGNOPS_SCRATCH": str(tmp)}
    return subprocess.Popen([sys.executable, "-m", "alignops.workloads", str(config)], env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def _metrics(tmp: Path, tag: str) -> list[dict]:
    path = tmp / f"metrics-{tag}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _finish(tmp: Path, process: subprocess.Popen, tag: str, store: Path) -> Run:
    _, stderr = process.communicate(timeout=600)
    result_path = tmp / f"result-{tag}.json"
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    return Run(process.returncode, stderr, _metrics(tmp, tag), result, store)


def run(tmp: Path, stage: str, gpus: int, zero: int | None, tag: str, store: Path | None = None,
        stop_at_step: int | None = None) -> Run:
    """A stage run to its end, or stopped by SIGTERM once a logged step reaches ``stop_at_step``."""
    store = store or tmp / f"store-{tag}"
    process = _start(tmp, _config(tmp, stage, store, gpus, zero, tag), tag)
    if stop_at_step is not None:
        deadline = time.monotonic() + 300
        while process.poll() is None and time.monotonic() < deadline:
            if any(r.get("step", 0) >= stop_at_step and "loss" in r for r in _metrics(tmp, tag)):
                process.send_signal(signal.SIGTERM)  # to the agent: it stops its workers
                break
            time.sleep(0.05)
    return _finish(tmp, process, tag, store)


def assert_same_losses(ours: dict[int, float], theirs: dict[int, float], relative: float = RELATIVE) -> None:
    shared = sorted(set(ours) & set(theirs))
    assert shared, (ours, theirs)
    for step in shared:
        assert ours[step] == pytest.approx(theirs[step], rel=relative), (step, ours, theirs)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Runs made once and shared: ``runs[(stage, gpus, zero)]``."""
    tmp = tmp_path_factory.mktemp("distributed")
    cache: dict[tuple, Run] = {}

    def get(stage: str, gpus: int, zero: int | None) -> Run:
        key = (stage, gpus, zero)
        if key not in cache:
            cache[key] = run(tmp, stage, gpus, zero, f"{stage}-{gpus}-{zero}")
            assert cache[key].code == 0, cache[key].stderr[-3000:]
        return cache[key]

    get.tmp = tmp
    return get


@pytest.mark.parametrize("stage", ["sft", "dpo"])
@pytest.mark.parametrize("zero", [2, 3])
def test_two_processes_give_one_process_losses_at_every_logged_step(runs, stage, zero):
    one, two = runs(stage, 1, None), runs(stage, 2, zero)
    assert sorted(one.losses()) == list(range(10, 101, 10)) == sorted(two.losses())
    assert_same_losses(two.losses(), one.losses())
    assert two.result["metrics"]["worldSize"] == 2 and one.result["metrics"]["worldSize"] == 1
    assert two.result["metrics"]["loss"] == pytest.approx(one.result["metrics"]["loss"], rel=RELATIVE)
    assert "launching 2 processes" in two.stderr and f"ZeRO stage {zero}" in two.stderr
    if stage == "dpo":  # the reference log-probs were scored once over the run, shared out between processes
        assert two.result["metrics"]["referenceSequencesScored"] == one.result["metrics"]["referenceSequencesScored"]


def _checkpoint_dir(run: Run) -> Path:
    return Path(run.result["checkpointUri"].removeprefix("file://"))


def test_a_sharded_run_commits_one_hugging_face_model(runs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    one, sharded = runs("sft", 1, None), runs("sft", 2, 3)
    directory = _checkpoint_dir(sharded)
    files = {p.name for p in directory.iterdir()}
    assert {"model.safetensors", "config.json", "manifest.json"} <= files
    assert "optimizer.index.json" not in files  # the final checkpoint is read for its weights: no optimizer state
    assert not [f for f in files if f.startswith(("zero_pp", "mp_rank", "bf16_zero"))], files  # no engine shards
    ours = AutoModelForCausalLM.from_pretrained(str(directory))
    # exactly the weights the run ended with: their held-out loss is the one the run reported
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    records = generate("sft", COMMON["evalSize"], 1, held_out=True)  # the stage's held-out split
    held_out = [tokenize_sft(r, tokenizer, COMMON["maxLength"]) for r in records]
    assert sft_eval_loss(ours, held_out, tokenizer.pad_token_id) == pytest.approx(sharded.result["metrics"]["evalLossAfter"], rel=1e-5)
    # and the weights one process trains, up to the float order of 100 Adam steps (each moves a
    # weight by about the learning rate, 0.003; a missing or misplaced shard would be off by ~0.1)
    theirs = AutoModelForCausalLM.from_pretrained(str(_checkpoint_dir(one)))
    for (name, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        assert a.shape == b.shape, name
        assert (a - b).abs().max() < STAGES["sft"]["hyperparameters"]["learningRate"], name
    # a checkpoint to resume from holds the optimizer state whole and by parameter name: the same
    # names as one process writes
    resumable, resumable_one = (d.with_name("checkpoint-50") for d in (directory, _checkpoint_dir(one)))
    index = json.loads((resumable / "optimizer.index.json").read_text())
    assert index["step"] == 50
    assert index["weight_map"].keys() == json.loads((resumable_one / "optimizer.index.json").read_text())["weight_map"].keys()


def test_sigterm_stops_every_process_and_the_run_resumes_exactly(runs):
    tmp = runs.tmp
    baseline = runs("sft", 2, 2)
    stopped = run(tmp, "sft", 2, 2, "stopped", stop_at_step=10)
    assert stopped.code == 143, stopped.stderr[-3000:]
    committed = sorted(int(p.name.split("-")[1]) for p in (stopped.store / "default/dist/sft").glob("checkpoint-*"))
    step = committed[-1]
    assert 10 <= step < 90, committed
    # the processes stopped together: no worker outlived the agent
    leftover = subprocess.run(["pgrep", "-f", "config-stopped.json"], capture_output=True, text=True).stdout.split()
    assert leftover == []
    for other in ("on-one", "on-two"):  # copies for the resumes at other process counts
        shutil.copytree(stopped.store, tmp / f"store-{other}")
    resumed = run(tmp, "sft", 2, 2, "stopped", store=stopped.store)
    assert resumed.code == 0, resumed.stderr[-3000:]
    after = {s: v for s, v in resumed.losses().items() if s > step}
    assert after, resumed.losses()
    assert_same_losses(after, baseline.losses(), relative=1e-6)
    assert resumed.result["metrics"]["lossFirst"] == pytest.approx(baseline.result["metrics"]["lossFirst"], rel=1e-6)


@pytest.mark.parametrize("gpus, zero", [(1, None), (2, 3)], ids=["two-to-one", "two-to-two-zero3"])
def test_a_stopped_run_resumes_on_another_process_count_or_zero_stage(runs, gpus, zero):
    tmp = runs.tmp
    tag = "on-one" if gpus == 1 else "on-two"
    store = tmp / f"store-{tag}"
    if not store.exists():
        pytest.skip("needs the stopped run of test_sigterm_stops_every_process_and_the_run_resumes_exactly")
    step = max(int(p.name.split("-")[1]) for p in (store / "default/dist/sft").glob("checkpoint-*"))
    resumed = run(tmp, "sft", gpus, zero, tag, store=store)
    assert resumed.code == 0, resumed.stderr[-3000:]
    after = {s: v for s, v in resumed.losses().items() if s > step}
    assert_same_losses(after, runs("sft", 1, None).losses())
    if gpus == 1:  # a different process count is said in the log
        assert f"resuming at step {step} on 1 process(es) from a checkpoint written by 2" in resumed.stderr


def test_one_process_run_resumes_on_two(runs):
    tmp = runs.tmp
    stopped = run(tmp, "sft", 1, None, "one-stopped", stop_at_step=10)
    assert stopped.code == 143, stopped.stderr[-3000:]
    step = max(int(p.name.split("-")[1]) for p in (stopped.store / "default/dist/sft").glob("checkpoint-*"))
    resumed = run(tmp, "sft", 2, 2, "one-stopped", store=stopped.store)
    assert resumed.code == 0, resumed.stderr[-3000:]
    assert_same_losses({s: v for s, v in resumed.losses().items() if s > step}, runs("sft", 1, None).losses())
    assert "from a checkpoint written by 1" in resumed.stderr
