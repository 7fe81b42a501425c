"""What a person sees during ``alignops run``: a progress bar per stage with step, loss and speed,
and a summary table at the end."""

from __future__ import annotations

from pathlib import Path

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from alignops.api.job import AlignmentJob
from alignops.api.status import JobStatus, StageStatus
from alignops.cli.codes import EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK, EXIT_SPEC_CHANGED, EXIT_UNREADABLE
from alignops.local_executor import Interrupted, LocalExecutor, Observer, SpecChanged, StatusUnreadable, environment_error
from alignops.planner import RunOutcome, parse_time, retry_failed as planner_retry_failed
from alignops.run_lock import Locked

# (label, metrics): one figure, or a before -> after pair
SUMMARY_FIGURES = (("loss", ("loss",)), ("accuracy", ("accuracyBefore", "accuracyAfter")),
                   ("reward", ("rewardFirst", "rewardLast")), ("dropped", ("droppedExamples",)))


def _format_record(record: dict) -> str:
    parts = []
    if record.get("round") is not None:
        parts.append(f"round {record['round']}")
    for name, label in (("loss", "loss"), ("reward_mean", "reward"), ("accuracy", "acc"), ("tokens_per_second", "tok/s")):
        if isinstance(record.get(name), (int, float)):
            value = record[name]
            parts.append(f"{label} {value:,.0f}" if name == "tokens_per_second" else f"{label} {value:.4f}")
    return "  ".join(parts)


def run_with_progress(job: AlignmentJob, workdir: Path, console: Console, errors: Console, retry_failed: bool = False,
                      rerun: tuple[str, ...] = (), refuse_changed: bool = False) -> int:
    """``alignops run``: the exit code (``alignops.cli.codes``). Problems of the machine (the workdir,
    the disk, the lock) are one line on ``errors``, never a traceback."""
    executor = LocalExecutor(job, workdir)
    try:
        stale = executor.acquire()
    except Locked as exc:
        errors.print(f"[red]error[/]: {escape(str(exc))}", highlight=False)
        return EXIT_UNREADABLE
    except OSError as exc:
        errors.print(f"[red]error[/]: cannot use {escape(str(executor.job_dir))}: {escape(environment_error(exc))}", highlight=False)
        return EXIT_UNREADABLE
    try:
        if stale is not None:
            console.print(escape(f"took over the run lock of {stale}: that run ended without releasing it"), highlight=False,
                          soft_wrap=True)
        return _run_locked(executor, console, retry_failed, rerun, refuse_changed)
    except StatusUnreadable as exc:
        errors.print(f"[red]error[/]: {escape(str(exc))}", highlight=False)
        return EXIT_UNREADABLE
    except OSError as exc:
        errors.print(f"[red]error[/]: {escape(environment_error(exc))}; what was committed is kept, "
                     "and the same command resumes once this is fixed", highlight=False)
        return EXIT_UNREADABLE
    finally:
        executor.lock.release()


def _run_locked(executor: LocalExecutor, console: Console, retry_failed: bool, rerun: tuple[str, ...],
                refuse_changed: bool) -> int:
    job = executor.job
    try:
        status, reruns = executor.prepare(rerun, refuse_changed)
    except SpecChanged as exc:
        for changed in exc.reruns:
            console.print(f"[red]changed[/]: {escape(changed.reason)}", highlight=False, soft_wrap=True)
        console.print(escape(f"--no-rerun-changed: nothing was run; restore the spec, or run without --no-rerun-changed "
                             f"to run the changed stages and those after them again (status: {executor.status_path})"),
                      highlight=False, soft_wrap=True)
        return EXIT_SPEC_CHANGED
    for rerun_ in reruns:
        console.print(f"[yellow]rerun[/]: {escape(rerun_.reason)}", highlight=False, soft_wrap=True)
    if status.phase == "Failed" and retry_failed:
        status = planner_retry_failed(status)
    elif status.phase == "Failed":
        console.print(f"[red]{escape(job.name)} failed earlier[/]; rerun with --retry-failed to try the failed stage again, "
                      "or change its spec", highlight=False)
        print_summary(console, status, executor)
        return EXIT_INVALID
    progress = Progress(TextColumn("[bold]{task.fields[stage]}[/]"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console)
    tasks: dict[str, int] = {}

    def started(config, total):
        label = escape(f"{config.stage} (attempt {config.attempt})")
        tasks[config.stage] = progress.add_task("", total=total, stage=label, info="starting")

    def advanced(config, record):
        task = tasks.get(config.stage)
        if task is None or "step" not in record:
            return
        progress.update(task, completed=record["step"], total=record.get("total_steps"), info=escape(_format_record(record)))

    def ended(config, outcome: RunOutcome, log: Path):
        task = tasks.get(config.stage)
        if task is not None:
            progress.update(task, info=escape(f"{outcome.reason} (exit {outcome.exit_code})"))
        if outcome.exit_code not in (0, 143):
            tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
            console.print(f"[red]stage {escape(config.stage)} attempt {config.attempt} failed[/] "
                          f"({escape(str(outcome.reason))}): {escape(outcome.message or '')}", highlight=False, soft_wrap=True)
            for line in tail:
                console.print(Text(f"  {line}", style="dim"), highlight=False, soft_wrap=True)
            console.print(escape(f"  full log: {log}"), highlight=False)

    def waiting(seconds, reason):
        console.print(escape(f"waiting {seconds:.0f} s ({reason})"), highlight=False)

    executor.observer = Observer(started, advanced, ended, waiting)
    console.print(f"running [bold]{escape(job.name)}[/]: " + escape(" -> ".join(s.name for s in job.spec.stages)
                                                                    + f"  (status: {executor.status_path})"), highlight=False)
    try:
        with progress:
            status = executor.run(status)
    except Interrupted as stage:
        console.print(f"[yellow]stopped[/] during stage {escape(str(stage))}; its last checkpoint is committed. "
                      "Run the same command again to resume.", highlight=False)
        return EXIT_INTERRUPTED
    print_summary(console, status, executor)
    return EXIT_OK if status.phase == "Succeeded" else EXIT_INVALID


def _duration(start: str | None, end: str | None) -> str:
    if not start or not end:
        return "-"
    seconds = (parse_time(end) - parse_time(start)).total_seconds()
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _figures(metrics: dict[str, float]) -> str:
    """``loss 0.512, accuracy 0.120 -> 0.950, ...``: the summary's figures, whole words (a column
    of its own per metric would not fit 80 columns)."""
    parts = []
    for label, names in SUMMARY_FIGURES:
        values = [metrics[n] for n in names if n in metrics]
        if len(values) == 2:
            parts.append(f"{label} {values[0]:.3f} -> {values[1]:.3f}")
        elif values:
            parts.append(f"{label} {values[0]:.0f}" if float(values[0]).is_integer() else f"{label} {values[0]:.3f}")
    return ", ".join(parts) or "-"


def summary_table(status: JobStatus, title: str) -> Table:
    """The end-of-run table: short columns and one that wraps, so that it reads at 80 columns and
    in a log file without a cut word."""
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)
    table.add_column("stage", no_wrap=True)
    table.add_column("phase", no_wrap=True)
    table.add_column("tries", justify="right", no_wrap=True)
    table.add_column("time", no_wrap=True)
    table.add_column("results", overflow="fold", ratio=1, min_width=20)
    for stage in status.stages:
        table.add_row(stage.name, stage.phase, str(stage.attempts), _duration(stage.start_time, stage.completion_time),
                      _figures(stage.metrics))
    return table


def _checkpoints(stages: list[StageStatus]) -> list[str]:
    return [f"  {s.name}: {s.checkpoint_uri}" for s in stages if s.checkpoint_uri]


def print_summary(console: Console, status: JobStatus, executor: LocalExecutor) -> None:
    console.print(summary_table(status, f"{executor.job.name}: {status.phase}"))
    # URIs stay whole on one line (soft wrap: a terminal folds them, a log file keeps them to copy)
    lines = _checkpoints(status.stages)
    if lines:
        console.print("checkpoints:", highlight=False)
        for line in lines:
            console.print(Text(line), highlight=False, soft_wrap=True)
    if status.output_model:
        console.print(Text(f"output model: {status.output_model}"), highlight=False, soft_wrap=True)
    failed = status.condition("Failed")
    if failed and failed.status == "True":
        console.print(f"[red]{escape(failed.reason)}[/]: {escape(failed.message)}", highlight=False, soft_wrap=True)
