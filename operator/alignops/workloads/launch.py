"""Starting a stage run's worker processes: ``python -m alignops.workloads CONFIG.json`` with more
than one process (``resources.gpus`` > 1) becomes an agent that starts ``processes_per_node`` workers
of the same command through torch's elastic launcher (what torchrun uses), one per GPU, or gloo
workers on the CPU. The node count is fixed per run: a static rendezvous at ``PET_MASTER_ADDR:
PET_MASTER_PORT`` (torchrun's own variables; this node's rank from ``PET_NODE_RANK``), or a free
port on 127.0.0.1 for one node.

The agent maps how its workers ended to the run contract's exit code: 78 if any worker found a
configuration error, 143 when a SIGTERM stopped them (each committed what rank 0 commits), 1 for any
other failure. Workers die with the agent (``PR_SET_PDEATHSIG``), so a killed agent leaves no
orphans. Only rank 0 writes the result; the agent writes one only when no worker did.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import sys
import tempfile
import uuid
from pathlib import Path

from alignops.contract import EXIT_CONFIG, EXIT_OK, EXIT_RETRY, EXIT_SIGTERM, RESULT_PATH_ENV, StageRunConfig

# how long workers get to commit after a SIGTERM before the agent kills them (kubelet's grace
# period, when shorter, wins on a cluster)
SHUTDOWN_TIMEOUT = int(os.environ.get("ALIGNOPS_SHUTDOWN_TIMEOUT", "1800"))
RENDEZVOUS_TIMEOUT = int(os.environ.get("ALIGNOPS_RENDEZVOUS_TIMEOUT", "900"))
NODE_SCRATCH_ENV = "ALIGNOPS_NODE_SCRATCH"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def exit_code_of(worker_codes: list[int]) -> int:
    """The run's exit code from its workers' (a worker killed by a signal reports -signal)."""
    if EXIT_CONFIG in worker_codes:
        return EXIT_CONFIG
    if worker_codes and all(code in (EXIT_SIGTERM, -signal.SIGTERM) for code in worker_codes):
        return EXIT_SIGTERM
    return EXIT_OK if all(code == EXIT_OK for code in worker_codes) else EXIT_RETRY


def rendezvous_endpoint() -> tuple[str, int, int]:
    """(master address, port, this node's rank) from torchrun's PET_* variables, else this host."""
    addr = os.environ.get("PET_MASTER_ADDR")
    if addr:
        return addr, int(os.environ.get("PET_MASTER_PORT", "29500")), int(os.environ.get("PET_NODE_RANK", "0"))
    return "127.0.0.1", free_port(), 0


def launch(config_path: str, config: StageRunConfig) -> int:
    """Run ``config`` on its processes; returns the run's exit code."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    logging.getLogger("torch.distributed.elastic").setLevel(logging.WARNING)
    run = config.distributed
    addr, port, node_rank = rendezvous_endpoint()
    scratch = Path(tempfile.mkdtemp(prefix="alignops-node-", dir=os.environ.get("ALIGNOPS_SCRATCH")))
    os.environ[NODE_SCRATCH_ENV] = str(scratch)  # the workers inherit it: inputs are fetched once per node
    os.environ.setdefault("OMP_NUM_THREADS", os.environ.get("ALIGNOPS_CPU_THREADS", "1"))
    launch_config = LaunchConfig(
        min_nodes=run.nodes, max_nodes=run.nodes, nproc_per_node=run.processes_per_node,
        run_id=os.environ.get("ALIGNOPS_RUN_ID") or f"{config.stage}-a{config.attempt}-{uuid.uuid4().hex[:8]}",
        rdzv_backend="static", rdzv_endpoint=f"{addr}:{port}",
        rdzv_configs={"rank": node_rank, "timeout": RENDEZVOUS_TIMEOUT},
        max_restarts=0,  # a failed attempt is the planner's to retry, from the last commit
        monitor_interval=0.5, start_method="spawn", shutdown_timeout=SHUTDOWN_TIMEOUT,
    )
    print(f"launching {run.world_size} processes ({run.nodes} node(s) x {run.processes_per_node}, "
          f"ZeRO stage {run.zero_stage}) for stage {config.stage}", file=sys.stderr, flush=True)
    try:
        elastic_launch(launch_config, sys.executable)("-m", "alignops.workloads", config_path)
        code, message = EXIT_OK, None
    except ChildFailedError as exc:
        codes = [failure.exitcode for failure in exc.failures.values()]
        code, message = exit_code_of(codes), f"worker exit codes {sorted(set(codes))}"
    except SignalException as exc:
        code, message = EXIT_SIGTERM, f"stopped by signal {exc.sigval}"
    except Exception as exc:  # noqa: BLE001 - rendezvous and start-up failures are worth a retry
        code, message = EXIT_RETRY, f"{type(exc).__name__}: {exc}"
    _result_if_missing(message if code != EXIT_OK else None)
    return code


def _result_if_missing(message: str | None) -> None:
    from alignops.contract import StageResult

    path = os.environ.get(RESULT_PATH_ENV)
    if not path or not message:
        return
    target = Path(path)
    if target.exists() and target.stat().st_size:
        return  # rank 0 wrote the run's own result
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(StageResult(None, {}, message).encode())


def die_with_parent() -> None:
    """A worker gets SIGKILL when its agent dies (Linux), so a killed agent leaves no orphans."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    PR_SET_PDEATHSIG = 1
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the agent died before prctl took effect
        os._exit(EXIT_RETRY)
