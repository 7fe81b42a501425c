"""Starting a stage run's worker processes: ``python -m alignops.workloads CONFIG.json`` with more
than one process (``resources.gpus`` > 1, or ``resources.nodes`` > 1) becomes an agent that starts
``processes_per_node`` workers of the same command through torch's elastic launcher (what torchrun
uses), one per GPU, or gloo workers on the CPU. The node count is fixed per run: a static rendezvous
at ``PET_MASTER_ADDR:PET_MASTER_PORT`` (torchrun's own variables, set by the operator on each pod of
a run across nodes; this node's rank from ``PET_NODE_RANK``), or a free port on 127.0.0.1 for one
node. Without those variables (``alignops run``) a run across nodes starts every node's processes
on this machine: the same global ranks, so the same numbers.

Across nodes, node 0's agent serves the rendezvous store and waits for the others; every other node
first waits for that port to accept connections (a pod's DNS name can resolve seconds before its
port opens, and before its own name resolves at all: pytorch-operator#333), then joins. Both waits
share one deadline, ``ALIGNOPS_RENDEZVOUS_TIMEOUT`` seconds from the agent's start; a rendezvous that
does not complete by then fails the run (exit 1, worth a retry) with the result's reason
``RendezvousTimeout``.

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
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from alignops.contract import (
    DEFAULT_RENDEZVOUS_TIMEOUT,
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_RETRY,
    EXIT_SIGTERM,
    MASTER_ADDR_ENV,
    MASTER_PORT_ENV,
    NODE_RANK_ENV,
    NODES_ENV,
    REASON_RENDEZVOUS_TIMEOUT,
    RENDEZVOUS_TIMEOUT_ENV,
    RESULT_PATH_ENV,
    StageResult,
    StageRunConfig,
)

# how long workers get to commit after a SIGTERM before the agent kills them (kubelet's grace
# period, when shorter, wins on a cluster)
SHUTDOWN_TIMEOUT = int(os.environ.get("ALIGNOPS_SHUTDOWN_TIMEOUT", "1800"))
NODE_SCRATCH_ENV = "ALIGNOPS_NODE_SCRATCH"


class RendezvousTimeout(Exception):
    """Not every node joined the rendezvous before its deadline."""


class BadRendezvous(ValueError):
    """The rendezvous variables contradict the run's config: a configuration error (exit 78)."""


@dataclass(frozen=True)
class Rendezvous:
    """Where this run's nodes meet, which node this is, and how many processes it starts."""

    addr: str
    port: int
    node_rank: int
    nodes: int
    processes: int  # on this node
    timeout: float  # seconds, from the agent's start

    @property
    def endpoint(self) -> str:
        return f"{self.addr}:{self.port}"


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


def _int_env(env: dict[str, str] | os._Environ, name: str, default: int) -> int:
    text = env.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise BadRendezvous(f"{name}={text!r} is not an integer") from None


def rendezvous_of(config: StageRunConfig, env: dict[str, str] | os._Environ = os.environ) -> Rendezvous:
    """The rendezvous from torchrun's ``PET_*`` variables; without them this machine alone (127.0.0.1
    and a free port) runs every node's processes. Raises BadRendezvous when they contradict the
    config (a node count or rank that cannot be)."""
    run = config.distributed
    nodes = run.nodes
    timeout = _int_env(env, RENDEZVOUS_TIMEOUT_ENV, DEFAULT_RENDEZVOUS_TIMEOUT)
    if timeout <= 0:
        raise BadRendezvous(f"{RENDEZVOUS_TIMEOUT_ENV}={timeout}: give the nodes a positive number of seconds to meet")
    addr = env.get(MASTER_ADDR_ENV)
    if not addr:
        return Rendezvous("127.0.0.1", free_port(), 0, 1, run.world_size, timeout)
    declared = _int_env(env, NODES_ENV, nodes)
    if declared != nodes:
        raise BadRendezvous(f"{NODES_ENV}={declared}, but the run's config has {nodes} node(s)")
    rank = _int_env(env, NODE_RANK_ENV, 0)
    if not 0 <= rank < nodes:
        raise BadRendezvous(f"{NODE_RANK_ENV}={rank} is not a node of a run on {nodes} node(s) (0..{nodes - 1})")
    return Rendezvous(addr, _int_env(env, MASTER_PORT_ENV, 29500), rank, nodes, run.processes_per_node, timeout)


def wait_for_port(addr: str, port: int, deadline: float, clock: Callable[[], float] = time.monotonic,
                  sleep: Callable[[float], None] = time.sleep) -> None:
    """Return once ``addr:port`` accepts a TCP connection; RendezvousTimeout at ``deadline`` (on
    ``clock``). A name that does not resolve yet is waited for like a closed port."""
    delay, last = 0.2, "never tried"
    while True:
        remaining = deadline - clock()
        try:
            with socket.create_connection((addr, port), timeout=max(0.1, min(5.0, remaining))):
                return
        except OSError as exc:  # socket.gaierror (no such name yet) is an OSError too
            last = f"{type(exc).__name__}: {exc}"
        remaining = deadline - clock()
        if remaining <= 0:
            raise RendezvousTimeout(f"node 0 at {addr}:{port} did not accept connections in time (last: {last})")
        sleep(min(delay, remaining))
        delay = min(delay * 2, 2.0)


def _run_id(config: StageRunConfig, nodes: int) -> str:
    """The same on every node of a run (it prefixes the keys of the rendezvous store)."""
    if nodes == 1:
        return os.environ.get("ALIGNOPS_RUN_ID") or f"{config.stage}-a{config.attempt}-{uuid.uuid4().hex[:8]}"
    position = f"-r{config.round}-{config.role}" if config.round is not None else ""
    return f"{config.job.namespace}.{config.job.name}.{config.stage}-a{config.attempt}{position}"


def launch(config_path: str, config: StageRunConfig) -> int:
    """Run ``config`` on its processes; returns the run's exit code."""
    started = time.monotonic()
    try:
        rendezvous = rendezvous_of(config)
    except BadRendezvous as exc:
        message = f"configuration error: {exc}"
        print(message, file=sys.stderr, flush=True)
        _result_if_missing(message)
        return EXIT_CONFIG
    code, message, reason = _launch(config_path, config, rendezvous, started + rendezvous.timeout)
    _result_if_missing(message if code != EXIT_OK else None, reason)
    return code


def _launch(config_path: str, config: StageRunConfig, rdzv: Rendezvous, deadline: float) -> tuple[int, str | None, str | None]:
    """(exit code, message, reason) of the run on this node."""
    from torch.distributed import DistError
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    logging.getLogger("torch.distributed.elastic").setLevel(logging.WARNING)
    run = config.distributed
    where = f"rendezvous of {rdzv.nodes} nodes at {rdzv.endpoint} (this is node {rdzv.node_rank})"
    scratch = Path(tempfile.mkdtemp(prefix="alignops-node-", dir=os.environ.get("ALIGNOPS_SCRATCH")))
    os.environ[NODE_SCRATCH_ENV] = str(scratch)  # the workers inherit it: inputs are fetched once per node
    os.environ.setdefault("OMP_NUM_THREADS", os.environ.get("ALIGNOPS_CPU_THREADS", "1"))
    print(f"launching {run.world_size} processes ({run.nodes} node(s) x {run.processes_per_node}, "
          f"ZeRO stage {run.zero_stage}) for stage {config.stage}"
          + (f"; {where}, timeout {rdzv.timeout:.0f} s" if rdzv.nodes > 1 else "")
          + ("; every node's processes on this machine" if rdzv.nodes < run.nodes else ""), file=sys.stderr, flush=True)
    try:
        if rdzv.node_rank > 0:
            wait_for_port(rdzv.addr, rdzv.port, deadline)
        launch_config = LaunchConfig(
            min_nodes=rdzv.nodes, max_nodes=rdzv.nodes, nproc_per_node=rdzv.processes,
            run_id=_run_id(config, rdzv.nodes), rdzv_backend="static", rdzv_endpoint=rdzv.endpoint,
            # what is left of the deadline: the store's wait for every node (node 0) or its connect
            rdzv_configs={"rank": rdzv.node_rank, "timeout": max(1, int(deadline - time.monotonic()))},
            max_restarts=0,  # a failed attempt is the planner's to retry, from the last commit
            monitor_interval=0.5, start_method="spawn", shutdown_timeout=SHUTDOWN_TIMEOUT,
        )
        elastic_launch(launch_config, sys.executable)("-m", "alignops.workloads", config_path)
        return EXIT_OK, None, None
    except RendezvousTimeout as exc:
        return EXIT_RETRY, f"{where} did not complete in {rdzv.timeout:.0f} s: {exc}", REASON_RENDEZVOUS_TIMEOUT
    except ChildFailedError as exc:
        codes = [failure.exitcode for failure in exc.failures.values()]
        return exit_code_of(codes), f"worker exit codes {sorted(set(codes))}", None
    except SignalException as exc:
        return EXIT_SIGTERM, f"stopped by signal {exc.sigval}", None
    except DistError as exc:
        # the agent's own store calls: the rendezvous (a worker's failure is a ChildFailedError)
        timed_out = "timed out" in str(exc).lower() or "timeout" in str(exc).lower()
        return (EXIT_RETRY, f"{where} did not complete in {rdzv.timeout:.0f} s: {exc}" if timed_out else f"{where} failed: {exc}",
                REASON_RENDEZVOUS_TIMEOUT if timed_out else None)
    except Exception as exc:  # noqa: BLE001 - start-up failures are worth a retry
        return EXIT_RETRY, f"{type(exc).__name__}: {exc}", None


def _result_if_missing(message: str | None, reason: str | None = None) -> None:
    path = os.environ.get(RESULT_PATH_ENV)
    if not path or not message:
        return
    target = Path(path)
    if target.exists() and target.stat().st_size:
        return  # rank 0 wrote the run's own result
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(StageResult(None, {}, message, reason).encode())


def die_with_parent() -> None:
    """A worker gets SIGKILL when its agent dies (Linux), so a killed agent leaves no orphans."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    PR_SET_PDEATHSIG = 1
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the agent died before prctl took effect
        os._exit(EXIT_RETRY)
