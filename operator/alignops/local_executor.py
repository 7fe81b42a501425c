"""The local executor behind ``alignops run``: the planner's stage runs as local processes, with
the same entrypoint and the same resolved configuration a pod gets.

Files under ``<workdir>/<job>/``: ``status.json`` (the whole object, as ``kubectl get aj -o json``
prints it), and per stage ``metrics.jsonl``, ``run-a<n>.json`` (the config), ``result-a<n>.json``
and ``attempt-<n>.log`` (the process's output).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from alignops.api.job import AlignmentJob
from alignops.api.status import JobStatus
from alignops.contract import EXIT_CONFIG, EXIT_OK, EXIT_SIGTERM, RESULT_PATH_ENV, StageResult, StageRunConfig
from alignops.planner import (
    Defaults,
    Finished,
    RunOutcome,
    StartRun,
    Suspend,
    Wait,
    initial_status,
    mark_started,
    next_action,
    reconcile_stage_list,
    record_outcome,
)

STOP_GRACE_SECONDS = 120


@dataclass
class Observer:
    """Callbacks for whoever shows progress (the CLI's rich display; tests pass nothing)."""

    stage_started: Callable[[StageRunConfig, int | None], None] = lambda config, total: None
    progress: Callable[[StageRunConfig, dict], None] = lambda config, record: None
    stage_ended: Callable[[StageRunConfig, RunOutcome, Path], None] = lambda config, outcome, log: None
    waiting: Callable[[float, str], None] = lambda seconds, reason: None


class Interrupted(Exception):
    """Ctrl-C: the running stage committed a checkpoint and stopped; rerun to resume."""


@dataclass
class LocalExecutor:
    job: AlignmentJob
    workdir: Path
    observer: Observer = field(default_factory=Observer)
    python: str = sys.executable
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir).resolve()
        self.job_dir = self.workdir / self.job.name
        self.status_path = self.job_dir / "status.json"
        self.defaults = Defaults(storage_uri=f"file://{self.workdir}")
        self._interrupted = False

    # -- status -----------------------------------------------------------------------------------
    def load_status(self) -> JobStatus:
        if self.status_path.exists():
            saved = json.loads(self.status_path.read_text())
            return reconcile_stage_list(self.job, JobStatus.model_validate(saved.get("status", {})))
        return initial_status(self.job)

    def save_status(self, status: JobStatus) -> None:
        document = self.job.to_wire()
        document["metadata"].setdefault("namespace", self.defaults.namespace)
        document["status"] = status.to_wire()
        self.job_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(document, indent=2))
        os.replace(tmp, self.status_path)

    # -- running ----------------------------------------------------------------------------------
    def run(self, status: JobStatus | None = None) -> JobStatus:
        status = status or self.load_status()
        self.save_status(status)
        while True:
            action = next_action(self.job, status, self.defaults)
            if isinstance(action, Finished):
                return status
            if isinstance(action, Suspend):
                status.phase = "Suspended"
                self.save_status(status)
                return status
            if isinstance(action, Wait):
                self.observer.waiting(action.seconds, action.reason)
                time.sleep(max(0.0, action.seconds))
                continue
            assert isinstance(action, StartRun)
            config = action.config
            status = mark_started(self.job, status, config.stage)
            self.save_status(status)
            outcome = self.execute(config)
            status = record_outcome(self.job, status, config.stage, outcome)
            self.save_status(status)
            if self._interrupted:
                raise Interrupted(config.stage)

    def stage_dir(self, stage: str) -> Path:
        return self.job_dir / stage

    def execute(self, config: StageRunConfig) -> RunOutcome:
        directory = self.stage_dir(config.stage)
        directory.mkdir(parents=True, exist_ok=True)
        config_path = directory / f"run-a{config.attempt}.json"
        result_path = directory / f"result-a{config.attempt}.json"
        log_path = directory / f"attempt-{config.attempt}.log"
        metrics_path = directory / "metrics.jsonl"
        config_path.write_text(config.to_json())
        result_path.unlink(missing_ok=True)
        env = {**os.environ, **self.extra_env,
               RESULT_PATH_ENV: str(result_path), "ALIGNOPS_METRICS_LOG": str(metrics_path)}
        env.pop("ALIGNOPS_METRICS_PORT", None)
        self.observer.stage_started(config, config.hyperparameters.get("maxSteps"))
        offset = metrics_path.stat().st_size if metrics_path.exists() else 0
        with open(log_path, "ab") as log:
            # its own session: Ctrl-C reaches only us, and we stop the stage with SIGTERM
            process = subprocess.Popen([self.python, "-m", "alignops.workloads", str(config_path)],
                                       stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            previous = signal.signal(signal.SIGINT, lambda *_: self._stop(process))
            try:
                while process.poll() is None:
                    offset = self._follow(config, metrics_path, offset)
                    time.sleep(0.2)
            finally:
                signal.signal(signal.SIGINT, previous)
        self._follow(config, metrics_path, offset)
        outcome = read_outcome(process.returncode, result_path)
        self.observer.stage_ended(config, outcome, log_path)
        return outcome

    def _stop(self, process: subprocess.Popen) -> None:
        if self._interrupted:  # a second Ctrl-C: stop waiting for the checkpoint
            process.kill()
            return
        self._interrupted = True
        process.send_signal(signal.SIGTERM)

    def _follow(self, config: StageRunConfig, path: Path, offset: int) -> int:
        if not path.exists():
            return offset
        with open(path) as handle:
            handle.seek(offset)
            for line in handle:
                if line.endswith("\n"):
                    try:
                        self.observer.progress(config, json.loads(line))
                    except json.JSONDecodeError:
                        pass
                    offset += len(line.encode())
        return offset


def read_outcome(exit_code: int, result_path: Path) -> RunOutcome:
    try:
        result = StageResult.decode(result_path.read_text()) or StageResult(None)
    except OSError:
        result = StageResult(None)
    if exit_code < 0:  # killed by a signal
        exit_code = 128 - exit_code
    reason = {EXIT_OK: "Completed", EXIT_SIGTERM: "Suspended", EXIT_CONFIG: "ConfigurationError"}.get(exit_code, "Error")
    if exit_code == 137:
        reason = "Killed"
    return RunOutcome(exit_code=exit_code, checkpoint_uri=result.checkpoint_uri, metrics=result.metrics,
                      reason=reason, message=result.message)
