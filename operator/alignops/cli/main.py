"""``alignops``: validate manifests, print the CRD, run a pipeline on this machine, run the operator."""

from __future__ import annotations

from pathlib import Path

import typer
import yaml
from rich.console import Console
from rich.markup import escape

from alignops.api.validation import InvalidManifest, UnreadableManifest, parse_job, read_manifest_text

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()
errors = Console(stderr=True)

EXIT_INVALID = 1
EXIT_UNREADABLE = 2


def _documents(path: Path) -> list:
    text = read_manifest_text(path)
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise UnreadableManifest(f"{path} is not valid YAML: {exc}") from None


@app.command()
def validate(files: list[Path] = typer.Argument(..., help="AlignmentJob manifests (YAML).")) -> None:
    """Check manifests: exit 0 valid, 1 invalid (every error names its field), 2 unreadable."""
    code = 0
    for path in files:
        try:
            documents = _documents(path)
        except UnreadableManifest as exc:
            errors.print(f"[red]error[/]: {escape(str(exc))}")
            code = max(code, EXIT_UNREADABLE)
            continue
        if not documents:
            errors.print(f"[red]{path}[/]: no manifest in the file")
            code = max(code, EXIT_INVALID)
        for document in documents:
            try:
                job = parse_job(document)
            except InvalidManifest as exc:
                for error in exc.errors:
                    errors.print(f"[red]{escape(str(path))}[/]: {escape(str(error))}", highlight=False)
                code = max(code, EXIT_INVALID)
            else:
                console.print(f"{path}: AlignmentJob {job.name} is valid ({len(job.spec.stages)} stages: "
                              + " -> ".join(f"{s.name}({s.type})" for s in job.spec.stages) + ")", highlight=False)
    raise typer.Exit(code)


@app.command()
def crd() -> None:
    """Print the CustomResourceDefinition generated from the API models."""
    from alignops.api.crd import render_crd

    typer.echo(render_crd(), nl=False)


@app.command()
def run(
    file: Path = typer.Argument(..., help="AlignmentJob manifest."),
    workdir: Path = typer.Option(Path("runs"), "--workdir", "-w", help="Where status, logs, metrics and (by default) checkpoints go."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Try a failed stage again from its last checkpoint."),
    set_values: list[str] = typer.Option([], "--set", help="Override a field, e.g. --set stages.sft.hyperparameters.maxSteps=20."),
) -> None:
    """Run the pipeline on this machine, stage after stage; rerun the same command to resume."""
    from alignops.cli.overrides import apply_overrides
    from alignops.cli.progress import run_with_progress

    try:
        documents = _documents(file)
        if len(documents) != 1:
            raise InvalidManifest([])  # handled below
        job = parse_job(apply_overrides(documents[0], set_values))
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
    raise typer.Exit(run_with_progress(job, workdir, retry_failed, console))


@app.command()
def plot(
    job_dir: Path = typer.Argument(..., help="<workdir>/<job>: the directory `alignops run` writes."),
    output: Path = typer.Option(None, "--output", "-o", help="PNG to write (default <job_dir>/metrics.png)."),
) -> None:
    """Plot loss, reward and accuracy of every stage of a local run as a PNG."""
    from alignops.cli.plot import plot_job

    path = plot_job(job_dir, output)
    console.print(f"wrote {path}")


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
