"""``alignops``: validate manifests, print the CRD, run a pipeline on this machine, run the operator."""

from __future__ import annotations

from pathlib import Path

import typer
import yaml
from rich.console import Console
from rich.markup import escape

from alignops.api.validation import InvalidManifest, UnreadableManifest, parse_job, read_manifest_text
from alignops.cli.codes import EXIT_INVALID, EXIT_UNREADABLE, RUN_EXIT_CODES, VALIDATE_EXIT_CODES, exit_code_help

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__,
                  epilog=exit_code_help("validate", VALIDATE_EXIT_CODES) + "\n\n" + exit_code_help("run", RUN_EXIT_CODES))
console = Console()
errors = Console(stderr=True, soft_wrap=True)  # an error stays one line, in a terminal as in a log file


def _documents(path: Path) -> list:
    text = read_manifest_text(path)
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise UnreadableManifest(f"{path} is not valid YAML: {exc}") from None


@app.command(epilog=exit_code_help("validate", VALIDATE_EXIT_CODES))
def validate(files: list[Path] = typer.Argument(..., help="AlignmentJob manifests (YAML).")) -> None:
    """Check manifests as the API server would: exit 0 valid, 1 invalid (every error names its field), 2 unreadable."""
    code = 0
    for path in files:
        try:
            documents = _documents(path)
        except UnreadableManifest as exc:
            errors.print(f"[red]error[/]: {escape(str(exc))}")
            code = max(code, EXIT_UNREADABLE)
            continue
        if not documents:
            errors.print(f"[red]{escape(str(path))}[/]: no manifest in the file")
            code = max(code, EXIT_INVALID)
        for document in documents:
            try:
                job = parse_job(document)
            except InvalidManifest as exc:
                for error in exc.errors:
                    errors.print(f"[red]{escape(str(path))}[/]: {escape(str(error))}", highlight=False)
                code = max(code, EXIT_INVALID)
            else:
                console.print(escape(f"{path}: AlignmentJob {job.name} is valid ({len(job.spec.stages)} stages: "
                                     + " -> ".join(f"{s.name}({s.type})" for s in job.spec.stages) + ")"), highlight=False)
    raise typer.Exit(code)


@app.command()
def crd() -> None:
    """Print the CustomResourceDefinition generated from the API models."""
    from alignops.api.crd import render_crd

    typer.echo(render_crd(), nl=False)


@app.command(epilog=exit_code_help("run", RUN_EXIT_CODES))
def run(
    file: Path = typer.Argument(..., help="AlignmentJob manifest."),
    workdir: Path = typer.Option(Path("runs"), "--workdir", "-w", help="Where status, logs, metrics and (by default) checkpoints go."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Try a failed stage again from its last checkpoint."),
    set_values: list[str] = typer.Option([], "--set", help="Override a field, e.g. --set stages.sft.hyperparameters.maxSteps=20; "
                                         "stages.*.… sets it in every stage whose type has the field."),
    rerun: list[str] = typer.Option([], "--rerun", help="Run this stage (and every stage after it) again from its inputs (repeatable)."),
    no_rerun_changed: bool = typer.Option(False, "--no-rerun-changed", help="Refuse (exit 3) instead of rerunning stages whose spec changed since they ran."),
) -> None:
    """Run the pipeline on this machine, stage after stage; the same command resumes. A stage whose
    spec changed since it ran, and every stage after it, runs again from its inputs."""
    from alignops.cli.overrides import apply_overrides
    from alignops.cli.progress import run_with_progress

    try:
        documents = _documents(file)
        if len(documents) != 1:
            raise InvalidManifest([])  # handled below
        document, notes = apply_overrides(documents[0], set_values)
        job = parse_job(document)
    except UnreadableManifest as exc:
        errors.print(f"[red]error[/]: {escape(str(exc))}")
        raise typer.Exit(EXIT_UNREADABLE) from None
    except InvalidManifest as exc:
        for error in exc.errors or ["the file must hold exactly one AlignmentJob"]:
            errors.print(f"[red]{escape(str(file))}[/]: {escape(str(error))}", highlight=False)
        raise typer.Exit(EXIT_INVALID) from None
    except ValueError as exc:
        errors.print(f"[red]--set[/]: {escape(str(exc))}")
        raise typer.Exit(EXIT_INVALID) from None
    for note in notes:
        console.print(escape(note), highlight=False)
    unknown = [name for name in rerun if job.stage(name) is None]
    if unknown:
        errors.print(escape(f"--rerun {unknown[0]}: no stage named {unknown[0]!r}; the stages are "
                            + ", ".join(s.name for s in job.spec.stages)), highlight=False)
        raise typer.Exit(EXIT_INVALID)
    raise typer.Exit(run_with_progress(job, workdir, console, errors, retry_failed=retry_failed,
                                       rerun=tuple(rerun), refuse_changed=no_rerun_changed))


@app.command()
def plot(
    job_dir: Path = typer.Argument(..., help="<workdir>/<job>: the directory `alignops run` writes."),
    output: Path = typer.Option(None, "--output", "-o", help="PNG to write (default <job_dir>/metrics.png)."),
) -> None:
    """Plot loss, reward and accuracy of every stage of a local run as a PNG."""
    from alignops.cli.plot import plot_job

    try:
        path = plot_job(job_dir, output)
    except OSError as exc:  # no metrics there, or the PNG cannot be written: one line, not a traceback
        errors.print(f"[red]error[/]: {escape(str(exc))}", highlight=False)
        raise typer.Exit(EXIT_UNREADABLE) from None
    console.print(escape(f"wrote {path}"), highlight=False)


@app.command()
def operator(
    namespace: list[str] = typer.Option([], "--namespace", "-n", help="Namespace to watch (repeat); default: ALIGNOPS_NAMESPACES, else all."),
    all_namespaces: bool = typer.Option(False, "--all-namespaces", "-A", help="Watch every namespace."),
    standalone: bool = typer.Option(None, "--standalone/--peering", help="Run without kopf peering (one replica)."),
    metrics_port: int = typer.Option(None, "--metrics-port", help="Port of /metrics (0: off); default ALIGNOPS_METRICS_PORT or 8080."),
    health_port: int = typer.Option(None, "--health-port", help="Port of /healthz (0: off); default ALIGNOPS_HEALTH_PORT or 8081."),
    verbose: bool = typer.Option(None, "--verbose/--quiet", help="Debug logging."),
) -> None:
    """Run the Kubernetes operator (settings: ALIGNOPS_* environment variables, see OperatorSettings)."""
    from alignops.operator.main import run_operator
    from alignops.operator.settings import OperatorSettings

    overrides: dict = {}
    if namespace:
        overrides["namespaces"] = ",".join(namespace)
    if all_namespaces:
        overrides["namespaces"] = ""
    for key, value in (("standalone", standalone), ("metrics_port", metrics_port), ("health_port", health_port), ("verbose", verbose)):
        if value is not None:
            overrides[key] = value
    run_operator(OperatorSettings(**overrides))


if __name__ == "__main__":
    app()
