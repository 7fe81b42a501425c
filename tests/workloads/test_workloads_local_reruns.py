"""`alignops run` again after the manifest changed: a changed stage and every stage after it run
again from their inputs under a new key (the old checkpoints stay, byte for byte), stages added to a
finished job run, `--rerun` forces one, `--no-rerun-changed` refuses; one run of a job at a time."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from alignops.run_lock import RunLock
from core.manifests import two_sft_job
from suite import run_cli

pytestmark = pytest.mark.slow


def _write(path, doc) -> str:
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def _tiny(steps: int = 2) -> dict:
    doc = two_sft_job()
    for stage in doc["spec"]["stages"]:
        stage["datasets"]["train"]["size"] = 16
        stage["hyperparameters"].update(maxSteps=steps, logEvery=1, batchSize=4, evalSize=2)
    return doc


def _status(workdir) -> dict:
    return json.loads((workdir / "demo" / "status.json").read_text())["status"]


def _committed(workdir) -> dict:
    return {p: p.read_bytes() for p in sorted((workdir / "default").rglob("*")) if p.is_file() and p.name != "summary.json"}


def test_a_changed_spec_reruns_from_inputs_and_keeps_what_was_committed(tmp_path):
    doc, workdir = _tiny(), tmp_path / "runs"
    manifest = _write(tmp_path / "job.yaml", doc)
    # a lock left by a run that died is taken over
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (workdir / "demo").mkdir(parents=True)
    (workdir / "demo" / "run.lock").write_text(json.dumps({"pid": dead.pid, "host": "gone", "since": "2026-01-01T00:00:00Z"}))
    first = run_cli("run", manifest, "--workdir", str(workdir), columns=80)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"took over the run lock of pid {dead.pid} on gone since 2026-01-01T00:00:00Z" in first.stdout
    # the summary reads at 80 columns, in a pipe as in a log file: no cut word, every table line fits,
    # checkpoint URIs whole on their own lines
    summary = first.stdout[first.stdout.index("demo: Succeeded"):]
    table = summary[:summary.index("checkpoints:")]
    assert "…" not in summary and max(len(line.rstrip()) for line in table.splitlines()) <= 80
    assert "loss " in table and "accuracy 0." in table and " -> " in table
    assert f"  sft: file://{workdir}/default/demo/sft/checkpoint-2\n" in summary
    old_status, old_files = _status(workdir), _committed(workdir)
    assert len(old_files) > 6

    doc["spec"]["stages"][0]["hyperparameters"]["learningRate"] = 0.01
    _write(tmp_path / "job.yaml", doc)
    refused = run_cli("run", manifest, "--workdir", str(workdir), "--no-rerun-changed")
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert ("stage sft reruns from its inputs: its hyperparameters changed since it ran "
            "(hyperparameters.learningRate 0.001 -> 0.01)") in refused.stdout
    assert _status(workdir) == old_status and _committed(workdir) == old_files  # nothing run, nothing written

    doc["spec"]["stages"].append({**doc["spec"]["stages"][1], "name": "sft3", "policy": {"fromStage": "sft2"}})
    _write(tmp_path / "job.yaml", doc)
    rerun = run_cli("run", manifest, "--workdir", str(workdir))
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "rerun: stage sft reruns from its inputs: its hyperparameters changed since it ran" in rerun.stdout
    assert "rerun: stage sft2 reruns: stage sft before it reruns" in rerun.stdout
    status = _status(workdir)
    sft, sft2, sft3 = status["stages"]
    assert status["phase"] == "Succeeded" and [s["phase"] for s in status["stages"]] == ["Succeeded"] * 3
    assert sft["checkpointUri"] == f"file://{workdir}/default/demo/sft/rerun-1/checkpoint-2"
    assert sft2["checkpointUri"] == f"file://{workdir}/default/demo/sft2/rerun-1/checkpoint-2"
    assert sft3["checkpointUri"] == f"file://{workdir}/default/demo/sft3/checkpoint-2"  # added: its first run
    assert (sft["attempts"], sft["rerun"], sft3["rerun"]) == (2, 1, 0)
    assert sft["metrics"]["loss"] != old_status["stages"][0]["metrics"]["loss"]  # the new spec's result, not the old
    config = json.loads((workdir / "demo" / "sft2" / "run-a2.json").read_text())
    assert config["inputs"]["policy"] == sft["checkpointUri"]  # the rerun starts from its rerun input
    # every file the first run committed is still there, unchanged; its metrics log set aside
    assert {p: b for p, b in _committed(workdir).items() if p in old_files} == old_files
    assert (workdir / "demo" / "sft" / "metrics.before-rerun-1.jsonl").exists()

    forced = run_cli("run", manifest, "--workdir", str(workdir), "--rerun", "sft3")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert "rerun: stage sft3 reruns from its inputs: a rerun was asked for" in forced.stdout
    after = _status(workdir)["stages"]
    assert after[:2] == status["stages"][:2]
    assert after[2]["checkpointUri"] == f"file://{workdir}/default/demo/sft3/rerun-1/checkpoint-2"
    unknown = run_cli("run", manifest, "--workdir", str(workdir), "--rerun", "nope")
    assert unknown.returncode == 1 and "--rerun nope: no stage named 'nope'; the stages are sft, sft2, sft3" in unknown.stderr


def test_a_second_run_of_a_job_says_who_holds_it_and_exits_2(tmp_path):
    manifest, workdir = _write(tmp_path / "job.yaml", _tiny()), tmp_path / "runs"
    lock = RunLock(workdir / "demo")
    assert lock.acquire() is None
    try:
        second = run_cli("run", manifest, "--workdir", str(workdir))
    finally:
        lock.release()
    assert second.returncode == 2, second.stdout + second.stderr
    assert f"is in use by pid {os.getpid()} on " in second.stderr and " since 20" in second.stderr
    assert "Traceback" not in second.stderr
    assert not (workdir / "demo" / "status.json").exists() and not (workdir / "default").exists()
