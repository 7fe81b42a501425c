"""``python -m alignops.workloads CONFIG.json``: run one stage run under the run contract
(``alignops.contract``) and map how it ended to an exit code and a result.

Permanent errors (``ConfigError`` and the rest of the contract's ``PermanentError``: a missing or
unreadable input, bad data, nothing to learn) exit 78 at once with one line naming the place;
SIGTERM (``StopRequested``, raised after a checkpoint is committed) exits 143; transient failures
exit 1, worth a retry (``context.exit_code_for`` sorts them).

A run on more than one process (``resources.gpus`` > 1) starts here too: this process becomes the
agent that launches the workers (``alignops.workloads.launch``), each of which comes back here as
one process of the group (``alignops.workloads.distributed``).
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

from pydantic import ValidationError

from alignops.contract import (
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_SIGTERM,
    RESULT_PATH_ENV,
    StageResult,
    StageRunConfig,
)
from alignops.workloads.context import ConfigError, RunContext, StopRequested, exit_code_for, make_context
from alignops.workloads.distributed import init_world, worker_environment
from alignops.workloads.launch import die_with_parent, launch
from alignops.workloads.stages import STAGES
from alignops.workloads.summary import record_summary


def write_result(result: StageResult) -> None:
    path = os.environ.get(RESULT_PATH_ENV)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(result.encode())


def load_config(path: str) -> StageRunConfig:
    try:
        return StageRunConfig.from_json(Path(path).read_text())
    except OSError as exc:
        raise FileNotFoundError(f"cannot read stage config {path}: {exc.strerror}") from None


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m alignops.workloads CONFIG.json", file=sys.stderr)
        return EXIT_CONFIG
    try:
        config = load_config(argv[0])
    except (FileNotFoundError, ValidationError) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        write_result(StageResult(None, {}, f"configuration error: {exc}"))
        return EXIT_CONFIG
    if config.type not in STAGES:
        message = f"stage type {config.type!r} has no workload; known: {', '.join(sorted(STAGES))}"
        print(message, file=sys.stderr)
        write_result(StageResult(None, {}, message))
        return EXIT_CONFIG
    if config.distributed.world_size > 1 and not worker_environment():
        return launch(argv[0], config)  # this process becomes the agent of the run's workers
    if worker_environment():
        die_with_parent()
    _quiet_libraries()
    started = time.time()
    ctx = None
    world = init_world()
    try:
        ctx = make_context(config, world)
        code, result = _run_stage(ctx)
    except ConfigError as exc:  # raised while opening storage
        code, result = EXIT_CONFIG, StageResult(None, {}, f"configuration error: {exc}")
        print(result.message, file=sys.stderr)
    if ctx is not None:  # a stage that failed or stopped still commits the checkpoint it handed over
        ctx.commits.drain()
    if world.is_main:  # one result and one summary per run
        try:
            write_result(result)
        except OSError as exc:  # e.g. a full disk: the exit code still says how it ended
            print(f"could not write the result ({exc.strerror or exc}): {result.message or 'no message'}", file=sys.stderr)
        if ctx is not None:
            record_summary(ctx, code, result.checkpoint_uri, result.metrics, result.message, started)
    if ctx is not None:
        shutil.rmtree(ctx.scratch, ignore_errors=True)
    return code


def _run_stage(ctx: RunContext) -> tuple[int, StageResult]:
    """(exit code, result) of one stage run."""
    try:
        stage = importlib.import_module(STAGES[ctx.config.type]).STAGE
        return EXIT_OK, stage(ctx).run()
    except StopRequested as exc:
        return EXIT_SIGTERM, StageResult(None, {}, str(exc))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG, StageResult(None, {}, f"configuration error: {exc}")
    except Exception as exc:  # noqa: BLE001 - sorted by the contract's error classes
        code = exit_code_for(exc)
        message = f"{type(exc).__name__}: {exc}"
        if code == EXIT_CONFIG:  # a permanent error's message is the whole story: no traceback
            message = f"permanent error: {exc}"
            print(message, file=sys.stderr)
        else:
            traceback.print_exc()
        return code, StageResult(None, {}, message)


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    _cpu_threads()


def _cpu_threads() -> None:
    """One intra-op thread on the CPU unless ALIGNOPS_CPU_THREADS says otherwise: the tiny models that
    run on CPUs are latency-bound, and OpenMP threads that spin-wait next to other busy processes
    made a forward pass 20x slower (235 ms against 11 ms, measured on 2 shared cores)."""
    import torch

    if not torch.cuda.is_available():
        torch.set_num_threads(int(os.environ.get("ALIGNOPS_CPU_THREADS", "1")))
