"""The local executor behind ``alignops run``: the planner's stage runs as local processes, with
the same entrypoint and the same resolved configuration a pod gets.

Files under ``<workdir>/<job>/``: ``status.json`` (the whole object, as ``kubectl get aj -o json``
prints it), ``run.lock`` (one run of the job at a time, ``alignops.run_lock``), and per stage
``metrics.jsonl``, ``run-a<n>.json`` (the config), ``result-a<n>.json`` and ``attempt-<n>.log``
(the process's output). A stage rerun from its inputs sets its old ``metrics.jsonl`` aside as
``metrics.before-rerun-<n>.jsonl``.

A stage process never outlives ``alignops run``: SIGINT, SIGHUP (the terminal closed) and SIGTERM
stop it the same way (SIGTERM, it commits a checkpoint and exits 143), any error of the executor
stops it before the error goes on, and on Linux the kernel sends it SIGTERM if ``alignops run``
dies without a word (SIGKILL).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import subprocess
import sys
import threading
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
    Rerun,
    RunOutcome,
    StartRun,
    Suspend,
    Wait,
    config_changes,
    initial_status,
    mark_started,
    next_action,
    plan_reruns,
    record_outcome,
    resolve_run,
)
from alignops.run_lock import Holder, RunLock

STOP_GRACE_SECONDS = 120
STOP_SIGNALS = (signal.SIGINT, signal.SIGHUP, signal.SIGTERM)
PR_SET_PDEATHSIG = 1


@dataclass
class Observer:
    """Callbacks for whoever shows progress (the CLI's rich display; tests pass nothing)."""

    stage_started: Callable[[StageRunConfig, int | None], None] = lambda config, total: None
    progress: Callable[[StageRunConfig, dict], None] = lambda config, record: None
    stage_ended: Callable[[StageRunConfig, RunOutcome, Path], None] = lambda config, outcome, log: None
    waiting: Callable[[float, str], None] = lambda seconds, reason: None


class Interrupted(Exception):
    """Ctrl-C, SIGHUP or SIGTERM: the running stage committed a checkpoint and stopped; rerun to resume."""


class StatusUnreadable(Exception):
    """``status.json`` exists but is not a status this version reads."""


class SpecChanged(Exception):
    """Stages whose spec changed since they ran, where the caller refused to rerun them."""

    def __init__(self, reruns: list[Rerun]):
        self.reruns = reruns
        super().__init__("; ".join(r.reason for r in reruns))


ENVIRONMENT_FIXES = {
    errno.ENOSPC: "free some space or choose another --workdir",
    errno.EDQUOT: "free some space or choose another --workdir",
    errno.EROFS: "choose a writable --workdir",
    errno.EACCES: "choose a --workdir you may write to",
    errno.EPERM: "choose a --workdir you may write to",
    errno.ENOTDIR: "a file is where a directory is expected: choose another --workdir",
    errno.EEXIST: "a file is where a directory is expected: choose another --workdir",
    errno.EISDIR: "a directory is where a file is expected: move it away or choose another --workdir",
}


def environment_error(exc: OSError) -> str:
    """One line for an OSError of the executor's own files: what failed, where, and the fix."""
    where = f" ({exc.filename})" if exc.filename else ""
    fix = ENVIRONMENT_FIXES.get(exc.errno)
    return f"{exc.strerror or exc}{where}" + (f": {fix}" if fix else "")


def _die_with_parent(parent: int) -> None:
    """In the stage process before exec: SIGTERM when its parent dies, even by SIGKILL (Linux), so
    it commits a checkpoint and stops instead of running on as an orphan."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


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
        self.lock = RunLock(self.job_dir)
        self._interrupted = False
        self._process: subprocess.Popen | None = None
        self._stopping: subprocess.Popen | None = None

    # -- status -----------------------------------------------------------------------------------
    def load_status(self) -> JobStatus:
        """The saved status as it was written (``prepare`` brings it in line with the spec)."""
        if not self.status_path.exists():
            return initial_status(self.job)
        try:
            return JobStatus.model_validate(json.loads(self.status_path.read_text()).get("status", {}))
        except (ValueError, AttributeError) as exc:  # JSON or schema errors: say so, never guess
            raise StatusUnreadable(f"{self.status_path} is not a status this version can read ({type(exc).__name__}); "
                                   "move it away to start the job over (checkpoints in storage are kept)") from None

    def prepare(self, rerun: tuple[str, ...] = (), refuse_changed: bool = False) -> tuple[JobStatus, list[Rerun]]:
        """The saved status brought in line with the spec (``planner.plan_reruns``): changed stages
        and those after them reset, ``rerun`` ones too. ``refuse_changed``: raise SpecChanged
        instead of resetting a stage whose own spec changed; nothing is written then."""
        status, reruns = plan_reruns(self.job, self.load_status(), rerun)
        reruns = [self._detailed(r, status) for r in reruns]
        refused = [r for r in reruns if r.changed]
        if refuse_changed and refused:
            raise SpecChanged(refused)
        for rerun_ in reruns:  # the old run's metrics stay, beside the new run's
            metrics = self.stage_dir(rerun_.stage) / "metrics.jsonl"
            if metrics.exists():
                os.replace(metrics, metrics.with_name(f"metrics.before-rerun-{status.stage(rerun_.stage).rerun}.jsonl"))
        return status, reruns

    def _detailed(self, rerun: Rerun, status: JobStatus) -> Rerun:
        """A changed stage's rerun line with what changed, from the config its last run got."""
        observed = status.stage(rerun.stage)
        old_path = self.stage_dir(rerun.stage) / f"run-a{observed.attempts}.json"
        if not rerun.changed or not old_path.exists():
            return rerun
        try:
            old = StageRunConfig.from_json(old_path.read_text())
        except ValueError:
            return rerun
        new = resolve_run(self.job, status, rerun.stage, observed.attempts + 1, self.defaults)
        detail = config_changes(old, new)
        if not detail:
            return rerun
        observed.message = f"{rerun.reason} ({detail})"
        return Rerun(rerun.stage, observed.message, rerun.changed)

    def acquire(self) -> Holder | None:
        """Take the job directory's run lock (``alignops.run_lock``); returns a stale holder taken over."""
        return self.lock.acquire()

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
        """Run stages until the job is finished or suspended. Takes the run lock unless held; without
        ``status`` the saved one, prepared (``prepare``)."""
        taken = not self.lock.held
        if taken:
            self.acquire()
        main = threading.current_thread() is threading.main_thread()  # only it may set handlers
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS} if main else {}
        try:
            return self._run(status or self.prepare()[0])
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if taken:
                self.lock.release()

    def _on_signal(self, *_) -> None:
        # the first signal asks the stage to commit and stop; a second one kills it
        if self._process is not None:
            self._stop(self._process)
        self._interrupted = True

    def _run(self, status: JobStatus) -> JobStatus:
        self.save_status(status)
        while True:
            if self._interrupted:
                raise Interrupted(status.current_stage or "-")
            action = next_action(self.job, status, self.defaults)
            if isinstance(action, Finished):
                return status
            if isinstance(action, Suspend):
                status.phase = "Suspended"
                self.save_status(status)
                return status
            if isinstance(action, Wait):
                self.observer.waiting(action.seconds, action.reason)
                until = time.monotonic() + max(0.0, action.seconds)
                while not self._interrupted and time.monotonic() < until:
                    time.sleep(min(0.5, max(0.0, until - time.monotonic())))
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
        parent = os.getpid()
        with open(log_path, "ab") as log:
            # its own session: Ctrl-C and a closed terminal reach only us, and we stop the stage with SIGTERM
            process = subprocess.Popen([self.python, "-m", "alignops.workloads", str(config_path)],
                                       stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                       preexec_fn=lambda: _die_with_parent(parent))
            self._process = process
            if self._interrupted:  # a signal came while it started
                self._stop(process)
            try:
                while process.poll() is None:
                    offset = self._follow(config, metrics_path, offset)
                    time.sleep(0.2)
            finally:
                self._process = None
                if process.poll() is None:  # an error of ours: the stage must not run on alone
                    self._stop(process)
                    try:
                        process.wait(STOP_GRACE_SECONDS)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()
        self._follow(config, metrics_path, offset)
        outcome = read_outcome(process.returncode, result_path, log_path)
        self.observer.stage_ended(config, outcome, log_path)
        return outcome

    def _stop(self, process: subprocess.Popen) -> None:
        """SIGTERM (commit a checkpoint, exit 143); a second stop kills without waiting."""
        if process.poll() is not None:
            return
        if self._stopping is process:
            process.kill()
            return
        self._stopping = process
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


def _last_line(log_path: Path | None) -> str | None:
    try:
        lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    except (OSError, AttributeError):
        return None
    return lines[-1][:500] if lines else None


def read_outcome(exit_code: int, result_path: Path, log_path: Path | None = None) -> RunOutcome:
    """How a stage process ended. A failed run that wrote no message (it died first, or could not
    write its result) gets its exit code and the last line of its log instead of nothing."""
    try:
        result = StageResult.decode(result_path.read_text()) or StageResult(None)
    except OSError:
        result = StageResult(None)
    if exit_code < 0:  # killed by a signal
        exit_code = 128 - exit_code
    reason = {EXIT_OK: "Completed", EXIT_SIGTERM: "Suspended", EXIT_CONFIG: "ConfigurationError"}.get(exit_code, "Error")
    if exit_code == 137:
        reason = "Killed"
    message = result.message
    if not message and exit_code not in (EXIT_OK, EXIT_SIGTERM):
        last = _last_line(log_path)
        message = f"exit code {exit_code}, no result written" + (f"; last output: {last}" if last else "")
    return RunOutcome(exit_code=exit_code, checkpoint_uri=result.checkpoint_uri, metrics=result.metrics,
                      reason=reason, message=message)
