"""`alignops run`: a pipeline on this machine, status.json in the CR's shape, Ctrl-C and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from suite import run_cli
from core.manifests import two_sft_job

pytestmark = pytest.mark.slow


def _manifest(tmp_path, steps):
    doc = two_sft_job()
    for stage in doc["spec"]["stages"]:
        stage["hyperparameters"].update(maxSteps=steps, logEvery=1, checkpointEvery=1000)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _status(workdir):
    path = workdir / "demo" / "status.json"
    return json.loads(path.read_text()) if path.exists() else None


def test_run_two_stages_then_stop_with_ctrl_c_and_resume(tmp_path):
    manifest, workdir = _manifest(tmp_path, 400), tmp_path / "runs"
    process = subprocess.Popen([sys.executable, "-m", "alignops.cli.main", "run", str(manifest), "--workdir", str(workdir)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "COLUMNS": "200"})
    metrics = workdir / "demo" / "sft" / "metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 10):
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=180)
    assert process.returncode == 130, output
    assert "Run the same command again to resume" in output
    stopped = _status(workdir)
    assert stopped["status"]["phase"] == "Suspended"
    assert stopped["status"]["stages"][0]["phase"] == "Suspended"
    stopped_step = json.loads(metrics.read_text().splitlines()[-1])["step"]
    committed = sorted(p.name for p in (workdir / "default/demo/sft").iterdir())
    assert committed == [f"checkpoint-{stopped_step}"]

    resumed = run_cli("run", str(manifest), "--workdir", str(workdir), "--set", "stages.*.hyperparameters.maxSteps=400")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    document = _status(workdir)
    status = document["status"]
    # the file is the whole object, as `kubectl get aj demo -o json` prints it
    assert document["apiVersion"] == "alignops.io/v1alpha1" and document["kind"] == "AlignmentJob"
    assert document["metadata"]["name"] == "demo"
    assert status["phase"] == "Succeeded" and status["currentStage"] == "sft2"
    first, second = status["stages"]
    assert first["attempts"] == 2 and first["failures"] == 0
    assert first["checkpointUri"] == f"file://{workdir}/default/demo/sft/checkpoint-400"
    assert status["outputModel"] == second["checkpointUri"] == f"file://{workdir}/default/demo/sft2/checkpoint-400"
    assert {"loss", "accuracyBefore", "accuracyAfter"} <= set(first["metrics"])
    steps = [r["step"] for r in map(json.loads, metrics.read_text().splitlines()) if "loss" in r]
    assert steps == list(range(1, 401)), "the resumed run continues at the next step"
    assert {c["type"]: c["status"] for c in status["conditions"]}["Succeeded"] == "True"
    assert "Succeeded" in resumed.stdout and "output model" in resumed.stdout
    # each stage run kept the job's summary in storage (it outlives the resource on a cluster)
    summary = json.loads((workdir / "default" / "demo" / "summary.json").read_text())
    assert summary["job"] == "demo" and list(summary["stages"]) == ["sft", "sft2"]
    assert summary["stages"]["sft"]["phase"] == "Succeeded" and summary["stages"]["sft"]["attempt"] == 2
    assert summary["stages"]["sft2"]["checkpointUri"] == second["checkpointUri"]
    assert summary["stages"]["sft"]["metrics"]["loss"] == pytest.approx(first["metrics"]["loss"], rel=1e-5)


def test_failed_stage_is_shown_and_retry_failed_reruns_it(tmp_path):
    doc = two_sft_job()
    doc["spec"]["stages"][0]["backoffLimit"] = 0
    doc["spec"]["stages"][0]["datasets"] = {"train": {"uri": f"file://{tmp_path}/later.jsonl"}}
    for stage in doc["spec"]["stages"]:
        stage["hyperparameters"].update(maxSteps=3)
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    workdir = tmp_path / "runs"
    failed = run_cli("run", str(manifest), "--workdir", str(workdir))
    assert failed.returncode == 1
    status = _status(workdir)["status"]
    assert status["phase"] == "Failed"
    assert status["conditions"][-1]["type"] in ("Failed", "Progressing")
    reasons = {c["type"]: c["reason"] for c in status["conditions"]}
    assert reasons["Failed"] == "ConfigurationError"
    assert "later.jsonl" in failed.stdout

    (tmp_path / "later.jsonl").write_text("\n".join(json.dumps({"prompt": f"{i}+1=", "completion": str(i + 1)}) for i in range(20)))
    again = run_cli("run", str(manifest), "--workdir", str(workdir))
    assert again.returncode == 1 and "--retry-failed" in again.stdout
    retried = run_cli("run", str(manifest), "--workdir", str(workdir), "--retry-failed")
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert _status(workdir)["status"]["phase"] == "Succeeded"


def test_set_override_errors_name_the_path(tmp_path):
    manifest = _manifest(tmp_path, 3)
    out = run_cli("run", str(manifest), "--workdir", str(tmp_path / "w"), "--set", "stages.nope.hyperparameters.maxSteps=2")
    assert out.returncode == 1 and "no stage named 'nope'" in out.stderr


def test_plot_draws_the_metrics_of_a_run(tmp_path):
    job_dir = tmp_path / "runs" / "demo"
    (job_dir / "sft").mkdir(parents=True)
    lines = [json.dumps({"step": s, "total_steps": 5, "loss": 2.0 / s}) for s in range(1, 6)]
    (job_dir / "sft" / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    out = run_cli("plot", str(job_dir))
    assert out.returncode == 0, out.stderr
    png = job_dir / "metrics.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    missing = run_cli("plot", str(tmp_path / "nothing"))
    assert missing.returncode != 0 and "no */metrics.jsonl" in (missing.stderr + missing.stdout)
