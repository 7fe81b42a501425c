"""`alignops run` when the machine gets in the way: a closed terminal (SIGHUP) or a killed CLI
(SIGKILL) leaves no stage running on its own, a workdir that cannot be used or a full disk is one
line and exit 2 with nothing committed lost, and messages reach the terminal as written."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from core.manifests import sft_job
from suite import run_cli

pytestmark = pytest.mark.slow


def _manifest(tmp_path, steps: int, **hyper) -> str:
    doc = sft_job()
    doc["spec"]["stages"][0]["datasets"]["train"]["size"] = 16
    doc["spec"]["stages"][0]["hyperparameters"].update(maxSteps=steps, logEvery=1, batchSize=4, evalSize=2, **hyper)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def _stage_pids(workdir: Path) -> list[int]:
    """Processes running a stage of this workdir (their command line names its run config)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"alignops.workloads" in command and any(str(workdir).encode() in part for part in command):
            pids.append(int(proc.name))
    return pids


def _start(manifest: str, workdir: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "alignops.cli.main", "run", manifest, "--workdir", str(workdir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "120"})


def _wait_for_steps(workdir: Path, count: int) -> None:
    metrics = workdir / "demo" / "sft" / "metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline:
        if metrics.exists() and sum(1 for line in metrics.read_text().splitlines() if '"loss"' in line) >= count:
            return
        time.sleep(0.1)
    raise AssertionError("the stage logged no steps within 180 s")


def _wait_gone(workdir: Path, seconds: float = 60) -> list[int]:
    deadline = time.time() + seconds
    while _stage_pids(workdir) and time.time() < deadline:
        time.sleep(0.2)
    return _stage_pids(workdir)


def test_sighup_stops_the_stage_like_ctrl_c_and_a_killed_cli_takes_its_stage_along(tmp_path):
    manifest, workdir = _manifest(tmp_path, 2000, checkpointEvery=10000), tmp_path / "runs"
    cli = _start(manifest, workdir)
    _wait_for_steps(workdir, 3)
    assert len(_stage_pids(workdir)) == 1
    cli.send_signal(signal.SIGHUP)  # the terminal closed
    output, _ = cli.communicate(timeout=120)
    assert cli.returncode == 130, output
    assert _stage_pids(workdir) == [], "the stage outlived `alignops run`"
    status = json.loads((workdir / "demo" / "status.json").read_text())["status"]
    assert status["phase"] == "Suspended" and status["stages"][0]["reason"] == "Suspended"
    committed = sorted(p.name for p in (workdir / "default" / "demo" / "sft").iterdir())
    assert len(committed) == 1 and committed[0].startswith("checkpoint-")  # it committed before it stopped

    cli = _start(manifest, workdir)  # resumes; then the CLI dies without a word
    _wait_for_steps(workdir, int(committed[0].split("-")[1]) + 3)
    cli.kill()
    cli.communicate(timeout=30)
    assert _wait_gone(workdir) == [], "the stage outlived a killed `alignops run`"
    # it got SIGTERM from the kernel (PR_SET_PDEATHSIG) and committed where it was
    steps = sorted(int(p.name.split("-")[1]) for p in (workdir / "default" / "demo" / "sft").iterdir())
    assert steps[-1] > int(committed[0].split("-")[1])
    log = (workdir / "demo" / "sft" / "attempt-2.log").read_text()
    assert "Traceback" not in log


@pytest.mark.parametrize("where", ["workdir", "job directory"])
def test_a_file_where_the_workdir_should_be_is_one_line_and_exit_2(tmp_path, where):
    manifest = _manifest(tmp_path, 1)
    workdir = tmp_path / "runs"
    blocker = workdir if where == "workdir" else workdir / "demo"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a directory")
    out = run_cli("run", manifest, "--workdir", str(workdir))
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr
    assert lines[0].startswith("error: cannot use ") and str(workdir / "demo") in lines[0]
    assert "a file is where a directory is expected: choose another --workdir" in lines[0]
    assert blocker.read_text() == "not a directory"


def test_a_full_disk_is_one_line_and_exit_2_and_loses_nothing(tmp_path, monkeypatch):
    """ENOSPC injected where the status is saved after the stage ran: the stage's checkpoint is
    committed, the status says where it was, and the same command resumes and finishes."""
    from typer.testing import CliRunner

    from alignops.cli.main import app

    manifest, workdir = _manifest(tmp_path, 2), tmp_path / "runs"
    real_replace = os.replace
    saved = []

    def replace(src, dst, *args, **kwargs):
        if str(dst).endswith("status.json"):
            saved.append(json.loads(Path(src).read_text())["status"]["phase"])
            if len(saved) == 3:  # first, started, (the outcome: the disk is full)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    result = CliRunner().invoke(app, ["run", manifest, "--workdir", str(workdir)])
    monkeypatch.setattr(os, "replace", real_replace)
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())  # as one line, whatever width the console wrapped it to
    assert text.count("error:") == 1 and "Traceback" not in text
    assert (f"error: No space left on device ({workdir / 'demo' / 'status.json'}): free some space or choose another "
            "--workdir; what was committed is kept, and the same command resumes once this is fixed") in text
    status = json.loads((workdir / "demo" / "status.json").read_text())["status"]
    assert status["stages"][0]["phase"] == "Running"  # the last status that could be saved
    checkpoint = workdir / "default" / "demo" / "sft" / "checkpoint-2"
    weights = (checkpoint / "model.safetensors").read_bytes()
    assert (checkpoint / "manifest.json").exists()

    again = run_cli("run", manifest, "--workdir", str(workdir))
    assert again.returncode == 0, again.stdout + again.stderr
    stage = json.loads((workdir / "demo" / "status.json").read_text())["status"]["stages"][0]
    assert stage["checkpointUri"] == f"file://{checkpoint}" and stage["attempts"] == 2
    assert (checkpoint / "model.safetensors").read_bytes() == weights  # resumed from it, not rewritten


def test_messages_show_as_written_and_a_wildcard_set_skips_stages_without_the_field(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"prompt": "1+2=", "completion": "3"}) + "\n"
                    + json.dumps({"prompt": {"text": "[str] [bold]x[/bold]"}, "completion": "3"}) + "\n")
    doc = sft_job()
    doc["spec"]["stages"][0]["datasets"] = {"train": {"uri": f"file://{data}"}}
    doc["spec"]["stages"].append({"name": "rl", "type": "rl", "policy": {"fromStage": "sft"},
                                  "datasets": {"train": {"generator": "arithmetic", "size": 8}}})
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    out = run_cli("run", str(manifest), "--workdir", str(tmp_path / "runs"), "--set", "stages.*.hyperparameters.maxSteps=1")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "--set stages.*.hyperparameters.maxSteps: skipped rl (rl): no hyperparameters.maxSteps in that type" in out.stdout
    # the workload's message with its markup-like text intact, the log's lines without a literal style tag
    assert f"{data}:2: field `prompt` must be a string, got dict \"{{'text': '[str] [bold]x[/bold]'}}\"" in out.stdout
    assert "[dim]" not in out.stdout and "[/]" not in out.stdout
    spec = json.loads((tmp_path / "runs" / "demo" / "status.json").read_text())["spec"]
    assert spec["stages"][0]["hyperparameters"]["maxSteps"] == 1 and "maxSteps" not in spec["stages"][1].get("hyperparameters", {})
