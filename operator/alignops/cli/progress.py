"""What a person sees during ``alignops run``: a progress bar per stage with step, loss and speed,
and a summary table at the end."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from alignops.api.job import AlignmentJob
from alignops.api.status import JobStatus
from alignops.local_executor import Interrupted, LocalExecutor, Observer
from alignops.planner import RunOutcome, parse_time, retry_failed as planner_retry_failed

SUMMARY_METRICS = ("loss", "accuracyBefore", "accuracyAfter", "rewardFirst", "rewardLast")


def _format_record(record: dict) -> str:
    parts = []
    if record.get("round") is not None:
        parts.append(f"round {record['round']}")
    for name, label in (("loss", "loss"), ("reward_mean", "reward"), ("accuracy", "acc"), ("tokens_per_second", "tok/s")):
        if isinstance(record.get(name), (int, float)):
            value = record[name]
            parts.append(f"{label} {value:,.0f}" if name == "tokens_per_second" else f"{label} {value:.4f}")
    return "  ".join(parts)


def run_with_progress(job: AlignmentJob, workdir: Path, retry_failed: bool, console: Console) -> int:
    progress = Progress(TextColumn("[bold]{task.fields[stage]}[/]"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console)
    tasks: dict[str, int] = {}

    def started(config, total):
        label = f"{config.stage} (attempt {config.attempt})"
        tasks[config.stage] = progress.add_task("", total=total, stage=label, info="starting")

    def advanced(config, record):
        task = tasks.get(config.stage)
        if task is None or "step" not in record:
            return
        progress.update(task, completed=record["step"], total=record.get("total_steps"), info=_format_record(record))

    def ended(config, outcome: RunOutcome, log: Path):
        task = tasks.get(config.stage)
        if task is not None:
            progress.update(task, info=f"{outcome.reason} (exit {outcome.exit_code})")
        if outcome.exit_code not in (0, 143):
            tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
            console.print(f"[red]stage {config.stage} attempt {config.attempt} failed[/] ({outcome.reason}): {outcome.message or ''}")
            for line in tail:
                console.print(f"  [dim]{line}[/]", highlight=False, markup=False)
            console.print(f"  full log: {log}")

    def waiting(seconds, reason):
        console.print(f"waiting {seconds:.0f} s ({reason})")

    executor = LocalExecutor(job, workdir, Observer(started, advanced, ended, waiting))
    status = executor.load_status()
    if status.phase == "Failed" and retry_failed:
        status = planner_retry_failed(status)
    elif status.phase == "Failed":
        console.print(f"[red]{job.name} failed earlier[/]; rerun with --retry-failed to try the failed stage again")
        print_summary(console, executor.load_status(), executor)
        return 1
    console.print(f"running [bold]{job.name}[/]: " + " -> ".join(s.name for s in job.spec.stages)
                  + f"  (status: {executor.status_path})")
    try:
        with progress:
            status = executor.run(status)
    except Interrupted as stage:
        console.print(f"[yellow]stopped[/] during stage {stage}; its last checkpoint is committed. "
                      "Run the same command again to resume.")
        return 130
    print_summary(console, status, executor)
    return 0 if status.phase == "Succeeded" else 1


def _duration(start: str | None, end: str | None) -> str:
    if not start or not end:
        return "-"
    seconds = (parse_time(end) - parse_time(start)).total_seconds()
    return f"{seconds:.0f} s"


def print_summary(console: Console, status: JobStatus, executor: LocalExecutor) -> None:
    table = Table(title=f"{executor.job.name}: {status.phase}")
    for column in ("stage", "phase", "attempts", "time", *SUMMARY_METRICS, "checkpoint"):
        table.add_column(column)
    for stage in status.stages:
        metrics = [f"{stage.metrics[m]:.3f}" if m in stage.metrics else "-" for m in SUMMARY_METRICS]
        table.add_row(stage.name, stage.phase, str(stage.attempts), _duration(stage.start_time, stage.completion_time),
                      *metrics, stage.checkpoint_uri or "-")
    console.print(table)
    if status.output_model:
        console.print(f"output model: {status.output_model}")
    failed = status.condition("Failed")
    if failed and failed.status == "True":
        console.print(f"[red]{failed.reason}[/]: {failed.message}", highlight=False)
