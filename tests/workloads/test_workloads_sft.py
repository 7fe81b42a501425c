"""The SFT stage run through the workload contract: exit codes, result, checkpoints, exact resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from alignops.api import parse_job
from alignops.planner import Defaults, initial_status, resolve_run
from alignops.contract import RESULT_LIMIT, StageResult
from core.manifests import sft_job

pytestmark = pytest.mark.slow


def _config(tmp_path, name="demo", **hyper):
    doc = sft_job(name)
    doc["spec"]["stages"][0]["hyperparameters"].update(hyper)
    job = parse_job(doc)
    config = resolve_run(job, initial_status(job), "sft", 1, Defaults(storage_uri=f"file://{tmp_path}/store"))
    path = tmp_path / f"{name}.json"
    path.write_text(config.to_json())
    return path


def _start(config_path, tmp_path, tag):
    env = {**os.environ, "ALIGNOPS_RESULT_PATH": str(tmp_path / f"result-{tag}.json"),
           "ALIGNOPS_METRICS_LOG": str(tmp_path / f"metrics-{tag}.jsonl")}
    return subprocess.Popen([sys.executable, "-m", "alignops.workloads", str(config_path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _records(tmp_path, tag):
    path = tmp_path / f"metrics-{tag}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_sft_trains_commits_and_the_checkpoint_loads_with_transformers(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = _config(tmp_path, maxSteps=30, learningRate=0.01, logEvery=1, checkpointEvery=10, keepCheckpoints=2)
    process = _start(config, tmp_path, "a")
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    result = json.loads((tmp_path / "result-a.json").read_text())
    uri = result["checkpointUri"]
    assert uri == f"file://{tmp_path}/store/default/demo/sft/checkpoint-30"
    records = _records(tmp_path, "a")
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 30 and losses[-1] < losses[0] * 0.8, losses
    metrics = result["metrics"]
    assert {"loss", "lossFirst", "evalLossBefore", "evalLossAfter", "accuracyBefore", "accuracyAfter"} <= set(metrics)
    # the held-out figures after training close the metrics log (the dashboard's accuracy panel
    # reads them); the result rounds to 6 decimals
    assert records[-1]["step"] == 30
    assert records[-1]["accuracy"] == pytest.approx(metrics["accuracyAfter"], abs=1e-6)
    assert records[-1]["eval_loss"] == pytest.approx(metrics["evalLossAfter"], abs=1e-6)
    assert metrics["loss"] == pytest.approx(losses[-1], abs=1e-6) and metrics["lossFirst"] == pytest.approx(losses[0], abs=1e-6)
    assert metrics["evalLossAfter"] < metrics["evalLossBefore"]
    directory = uri[len("file://"):]
    assert os.path.exists(os.path.join(directory, "model.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    # plain HF on the checkpoint gives the stage's evalLossAfter: the mean NLL of the response
    # tokens (completion + eos) of the 8 held-out records (evalSize 8), each scored on its own
    from alignops.demo.arithmetic import generate

    nll, tokens = 0.0, 0
    for record in generate("sft", 8, 0, held_out=True):
        prompt = tokenizer(f"<s>{record['prompt']}", add_special_tokens=False).input_ids
        ids = torch.tensor([prompt + tokenizer(f"{record['completion']}</s>", add_special_tokens=False).input_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1], -1)
        targets = ids[0, len(prompt):]
        nll -= float(logp[len(prompt) - 1 :].gather(-1, targets.unsqueeze(-1)).sum())
        tokens += len(targets)
    assert nll / tokens == pytest.approx(metrics["evalLossAfter"], abs=1e-4)
    # retention kept the newest 2 committed checkpoints
    committed = sorted(p.name for p in (tmp_path / "store/default/demo/sft").iterdir())
    assert committed == ["checkpoint-20", "checkpoint-30"]


def test_resume_after_sigterm_is_exact(tmp_path):
    # 400 steps: a SIGTERM sent on seeing step 15 lands well before the end, even on a fast CPU
    hyper = dict(maxSteps=400, learningRate=0.005, logEvery=1, checkpointEvery=1000, batchSize=4)
    straight = _start(_config(tmp_path, "straight", **hyper), tmp_path, "straight")
    assert straight.wait(timeout=300) == 0, straight.stderr.read()

    config = _config(tmp_path, "resumed", **hyper)
    first = _start(config, tmp_path, "first")
    deadline = time.time() + 120
    while time.time() < deadline and not any(r["step"] >= 15 for r in _records(tmp_path, "first")):
        time.sleep(0.05)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == 143, first.stderr.read()
    stopped_at = max(r["step"] for r in _records(tmp_path, "first") if "loss" in r)
    assert 15 <= stopped_at < 400
    second = _start(config, tmp_path, "second")
    assert second.wait(timeout=300) == 0, second.stderr.read()

    # after the resume, every step's loss (a function of the weights and of the batch) is identical
    straight_losses = {r["step"]: r["loss"] for r in _records(tmp_path, "straight") if "loss" in r}
    resumed = [r for r in _records(tmp_path, "second") if "loss" in r]
    assert resumed[0]["step"] == stopped_at + 1
    assert all(straight_losses[r["step"]] == r["loss"] for r in resumed)
    # the resumed run reports the first attempt's first loss, not the loss at the resume point
    first_losses = [json.loads((tmp_path / f"result-{tag}.json").read_text())["metrics"]["lossFirst"] for tag in ("straight", "second")]
    assert first_losses[0] == first_losses[1]
    a = load_file(tmp_path / "store/default/straight/sft/checkpoint-400/model.safetensors")
    b = load_file(tmp_path / "store/default/resumed/sft/checkpoint-400/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_configuration_error_exits_78_with_the_message(tmp_path):
    doc = sft_job()
    doc["spec"]["stages"][0]["datasets"] = {"train": {"uri": f"file://{tmp_path}/absent.jsonl"}}
    job = parse_job(doc)
    config = resolve_run(job, initial_status(job), "sft", 1, Defaults(storage_uri=f"file://{tmp_path}/store"))
    path = tmp_path / "bad.json"
    path.write_text(config.to_json())
    process = _start(path, tmp_path, "bad")
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 78
    assert "absent.jsonl" in stderr
    assert "absent.jsonl" in json.loads((tmp_path / "result-bad.json").read_text())["message"]


def test_messages_dataset_from_storage(tmp_path):
    data = tmp_path / "chat.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"say {i}"}, {"role": "assistant", "content": str(i)}]} for i in range(40)]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    doc = sft_job()
    doc["spec"]["stages"][0]["datasets"] = {"train": {"uri": f"file://{data}"}}
    doc["spec"]["stages"][0]["hyperparameters"].update(maxSteps=6, logEvery=1, learningRate=0.01)
    job = parse_job(doc)
    config = resolve_run(job, initial_status(job), "sft", 1, Defaults(storage_uri=f"file://{tmp_path}/store"))
    path = tmp_path / "chat.json"
    path.write_text(config.to_json())
    process = _start(path, tmp_path, "chat")
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    metrics = json.loads((tmp_path / "result-chat.json").read_text())["metrics"]
    assert "accuracyBefore" not in metrics  # a non-verifiable dataset has no accuracy
    assert metrics["loss"] < metrics["lossFirst"]


def test_result_fits_the_termination_message():
    metrics = {f"metric{i:03d}": 1.0 / (i + 1) for i in range(400)}
    text = StageResult("s3://bucket/" + "k" * 200, metrics, "m" * 5000).encode()
    assert len(text.encode()) <= RESULT_LIMIT
    decoded = json.loads(text)
    # the URI whole, the message at its 1024-character cap (cut further only once no metric is
    # left), and metrics dropped from the end: the first N, rounded to 6 decimals
    assert decoded["checkpointUri"] == "s3://bucket/" + "k" * 200
    assert decoded["message"] == "m" * 1024
    kept = len(decoded["metrics"])
    assert 0 < kept < 400
    assert decoded["metrics"] == {f"metric{i:03d}": round(1.0 / (i + 1), 6) for i in range(kept)}
    # and no more than needed: the next metric, ',"metricNNN":value', would not have fitted
    assert len(text.encode()) + len(f',"metric{kept:03d}":{round(1.0 / (kept + 1), 6)}') > RESULT_LIMIT
