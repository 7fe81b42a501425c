"""``python -m alignops.workloads CONFIG.json``: run one stage run and map its end to an exit code.

Exit codes: 0 success; 1 failed, worth a retry; 78 configuration error (message on stderr and in the
result); 143 stopped by SIGTERM after committing a checkpoint. The result (at most 4 KB of JSON:
``checkpointUri``, ``metrics``, ``message``) goes to ``ALIGNOPS_RESULT_PATH``: on a cluster the
container's termination-message path, so the operator never needs storage credentials.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from alignops.contract import (
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_RETRY,
    EXIT_SIGTERM,
    RESULT_PATH_ENV,
    StageResult,
    StageRunConfig,
)

# stage type -> module with ``run(ctx) -> StageResult``; imported only when that stage runs
STAGE_MODULES = {
    "sft": "alignops.workloads.sft",
    "reward": "alignops.workloads.reward",
    "preference": "alignops.workloads.preference",
    "rank": "alignops.workloads.rank",
    "rl": "alignops.workloads.rl",
}


def encode_result(checkpoint_uri: str | None, metrics: dict[str, float], message: str | None = None) -> str:
    return StageResult(checkpoint_uri, metrics, message).encode()


def write_result(text: str) -> None:
    path = os.environ.get(RESULT_PATH_ENV)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)


def load_config(path: str) -> StageRunConfig:
    try:
        return StageRunConfig.from_json(Path(path).read_text())
    except OSError as exc:
        raise FileNotFoundError(f"cannot read stage config {path}: {exc.strerror}") from None


def main(argv: list[str]) -> int:
    from alignops.workloads.context import ConfigError, make_context
    from alignops.workloads.summary import record_summary

    if len(argv) != 1:
        print("usage: python -m alignops.workloads CONFIG.json", file=sys.stderr)
        return EXIT_CONFIG
    try:
        config = load_config(argv[0])
    except (FileNotFoundError, ValidationError) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        write_result(encode_result(None, {}, f"configuration error: {exc}"))
        return EXIT_CONFIG
    if config.type not in STAGE_MODULES:
        message = f"stage type {config.type!r} has no workload; known: {', '.join(sorted(STAGE_MODULES))}"
        print(message, file=sys.stderr)
        write_result(encode_result(None, {}, message))
        return EXIT_CONFIG
    _quiet_libraries()
    started = time.time()
    ctx = None
    try:
        ctx = make_context(config)
        code, uri, metrics, message = _run_stage(ctx)
    except ConfigError as exc:  # raised while opening storage
        code, uri, metrics, message = EXIT_CONFIG, None, {}, f"configuration error: {exc}"
        print(message, file=sys.stderr)
    write_result(encode_result(uri, metrics, message))
    if ctx is not None:
        record_summary(ctx, code, uri, metrics, message, started)
        shutil.rmtree(ctx.scratch, ignore_errors=True)
    return code


def _run_stage(ctx) -> tuple[int, str | None, dict[str, float], str | None]:
    """(exit code, checkpoint URI, metrics, message) of one stage run."""
    from alignops.workloads.context import ConfigError, StopRequested

    try:
        module = importlib.import_module(STAGE_MODULES[ctx.config.type])
        result: StageResult = module.run(ctx)
        return EXIT_OK, result.checkpoint_uri, result.metrics, None
    except StopRequested as exc:
        return EXIT_SIGTERM, None, {}, str(exc)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG, None, {}, f"configuration error: {exc}"
    except Exception as exc:  # noqa: BLE001 - every other failure is worth a retry
        traceback.print_exc()
        return EXIT_RETRY, None, {}, f"{type(exc).__name__}: {exc}"


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
