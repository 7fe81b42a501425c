"""A run across nodes as the pods of an Indexed Job start it: one ``python -m alignops.workloads``
agent per node, given torchrun's variables (``PET_NNODES``, ``PET_NODE_RANK``, node 0's
``PET_MASTER_ADDR``/``PET_MASTER_PORT``) and ``ALIGNOPS_RENDEZVOUS_TIMEOUT``, here all on 127.0.0.1.

The rendezvous: variables that contradict the config are a configuration error (78); node 0 waits
for the others and a node > 0 waits for node 0's port, both until one deadline, after which the run
fails (1) with the result's reason ``RendezvousTimeout``. A SIGTERM to one node stops every rank at
the same step and rank 0 commits (both nodes exit 143).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from alignops.api import parse_job
from alignops.contract import StageRunConfig
from alignops.planner import Defaults, initial_status, resolve_run
from alignops.workloads.launch import BadRendezvous, RendezvousTimeout, free_port, rendezvous_of, wait_for_port

ARCH = {"hiddenSize": 32, "layers": 2, "heads": 2, "maxPositions": 32, "seed": 0}
SFT = {"name": "sft", "type": "sft", "datasets": {"train": {"generator": "arithmetic", "size": 400, "seed": 1}},
       "hyperparameters": {"batchSize": 8, "maxSteps": 200, "logEvery": 1, "checkpointEvery": 1000, "maxLength": 24,
                           "evalSize": 8, "warmupSteps": 2, "learningRate": 0.003}}


def _config(nodes: int, gpus: int = 0, store: Path | None = None) -> StageRunConfig:
    stage = {**SFT, "resources": {"nodes": nodes, "gpus": gpus}}
    job = parse_job({"apiVersion": "alignops.io/v1alpha1", "kind": "AlignmentJob", "metadata": {"name": "nodes"},
                     "spec": {"model": {"architecture": ARCH}, "stages": [stage]}})
    return resolve_run(job, initial_status(job), "sft", 1, Defaults(storage_uri=f"file://{store or '/nonexistent'}"))


def _node_env(rank: int, port: int, nodes: int = 2, timeout: int = 120) -> dict[str, str]:
    return {"PET_NNODES": str(nodes), "PET_NPROC_PER_NODE": "1", "PET_NODE_RANK": str(rank), "PET_MASTER_ADDR": "127.0.0.1",
            "PET_MASTER_PORT": str(port), "ALIGNOPS_RENDEZVOUS_TIMEOUT": str(timeout)}


class Node:
    """One node's agent: ``python -m alignops.workloads CONFIG.json`` with its pod's environment."""

    def __init__(self, tmp: Path, config: StageRunConfig, rank: int, env: dict[str, str]):
        self.dir = tmp / f"node-{rank}"
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / "config.json"
        path.write_text(config.to_json())
        self.result_path, self.metrics_path = self.dir / "result.json", self.dir / "metrics.jsonl"
        full = {**os.environ, **env, "ALIGNOPS_RESULT_PATH": str(self.result_path), "ALIGNOPS_METRICS_LOG": str(self.metrics_path),
                "ALIGNOPS_SCRATCH": str(self.dir)}
        self.process = subprocess.Popen([sys.executable, "-m", "alignops.workloads", str(path)], env=full, text=True,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        self.stderr = ""

    def wait(self, timeout: float = 300) -> int:
        _, self.stderr = self.process.communicate(timeout=timeout)
        return self.process.returncode

    @property
    def result(self) -> dict:
        return json.loads(self.result_path.read_text()) if self.result_path.exists() and self.result_path.stat().st_size else {}

    def steps(self) -> list[int]:
        lines = self.metrics_path.read_text().splitlines() if self.metrics_path.exists() else []
        return [r["step"] for r in map(json.loads, lines) if "loss" in r]


# -- the rendezvous variables -------------------------------------------------------------------------

def test_rendezvous_comes_from_torchruns_variables():
    config = _config(2)
    rdzv = rendezvous_of(config, _node_env(1, 29400, timeout=30))
    assert (rdzv.addr, rdzv.port, rdzv.node_rank, rdzv.nodes, rdzv.processes, rdzv.timeout) == ("127.0.0.1", 29400, 1, 2, 1, 30)
    single = rendezvous_of(_config(1, gpus=2), {})  # one node: this host and a free port
    assert (single.addr, single.node_rank, single.nodes, single.processes, single.timeout) == ("127.0.0.1", 0, 1, 2, 900)
    # `alignops run` of a stage across nodes (no PET_* variables): every node's processes here
    local = rendezvous_of(_config(2, gpus=2), {})
    assert (local.nodes, local.processes) == (1, 4) and local.port > 0


@pytest.mark.parametrize("env, words", [
    (_node_env(0, 29400, nodes=3), "PET_NNODES=3, but the run's config has 2 node(s)"),
    (_node_env(2, 29400), "PET_NODE_RANK=2 is not a node of a run on 2 node(s) (0..1)"),
    ({**_node_env(0, 29400), "PET_MASTER_PORT": "twenty"}, "PET_MASTER_PORT='twenty' is not an integer"),
    (_node_env(0, 29400, timeout=0), "ALIGNOPS_RENDEZVOUS_TIMEOUT=0"),
], ids=["node-count", "rank", "port", "timeout"])
def test_contradicting_rendezvous_variables_are_a_configuration_error(env, words):
    with pytest.raises(BadRendezvous, match=words.replace("(", r"\(").replace(")", r"\)").replace("$", r"\$")):
        rendezvous_of(_config(2), env)


def test_a_node_waits_for_node_0s_port_not_just_its_name():
    """The port opens 0.5 s after the wait began (a name resolves before its port accepts)."""
    port = free_port()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    timer = threading.Timer(0.5, lambda: (listener.bind(("127.0.0.1", port)), listener.listen()))
    timer.start()
    try:
        started = time.monotonic()
        wait_for_port("127.0.0.1", port, deadline=time.monotonic() + 30)
        assert 0.4 < time.monotonic() - started < 30
    finally:
        timer.cancel()
        listener.close()


def test_a_name_that_never_resolves_ends_at_the_deadline():
    started = time.monotonic()
    with pytest.raises(RendezvousTimeout, match="node 0 at big-sft-a1-0.big-sft-a1.invalid:29500 did not accept connections"):
        wait_for_port("big-sft-a1-0.big-sft-a1.invalid", 29500, deadline=time.monotonic() + 1.0)
    assert time.monotonic() - started < 10


# -- agents ------------------------------------------------------------------------------------------

def test_a_rendezvous_that_never_completes_fails_with_its_reason(tmp_path):
    """Node 0 alone waits for node 1; node 1 alone waits for node 0's port (another run's). Neither
    hangs: both exit 1 at the deadline, their results naming RendezvousTimeout."""
    config = _config(2)
    alone = Node(tmp_path / "first", config, 0, _node_env(0, free_port(), timeout=4))
    orphan = Node(tmp_path / "second", config, 1, _node_env(1, free_port(), timeout=4))
    assert alone.wait(120) == 1, alone.stderr[-2000:]
    assert orphan.wait(120) == 1, orphan.stderr[-2000:]
    for node, detail in ((alone, "1/2 clients joined"), (orphan, "did not accept connections")):
        assert node.result["reason"] == "RendezvousTimeout", node.result
        assert "did not complete in 4 s" in node.result["message"] and detail in node.result["message"], node.result
        assert node.result["checkpointUri"] is None


def test_variables_that_contradict_the_config_exit_78(tmp_path):
    node = Node(tmp_path, _config(2), 0, _node_env(0, free_port(), nodes=3))
    assert node.wait(120) == 78
    assert "configuration error: PET_NNODES=3" in node.result["message"]


@pytest.mark.slow
def test_a_sigterm_to_one_node_stops_both_at_one_step_and_rank_0_commits(tmp_path):
    """Preemption of node 1's pod: its agent forwards SIGTERM to its worker, every rank agrees at the
    next step (World.any), rank 0 (on node 0) commits, and both nodes exit 143."""
    store = tmp_path / "store"
    config = _config(2, store=store)
    port = free_port()
    nodes = [Node(tmp_path, config, rank, _node_env(rank, port)) for rank in (0, 1)]
    deadline = time.monotonic() + 300
    while nodes[0].process.poll() is None and time.monotonic() < deadline and max(nodes[0].steps(), default=0) < 3:
        time.sleep(0.05)
    assert max(nodes[0].steps(), default=0) >= 3, nodes[0].process.poll()
    os.killpg(nodes[1].process.pid, signal.SIGTERM)  # the kubelet signals the pod's process group
    codes = [node.wait(300) for node in nodes]
    assert codes == [143, 143], [n.stderr[-2000:] for n in nodes]
    committed = sorted(int(p.name.split("-")[1]) for p in (store / "default/nodes/sft").glob("checkpoint-*"))
    assert len(committed) == 1 and 3 <= committed[0] < 200, committed
    assert nodes[0].result["message"] == f"stopped at step {committed[0]}"  # rank 0's own result
    assert nodes[0].steps()[-1] == committed[0]  # it logged every step up to the one both stopped at
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split()
    assert leftover == []  # no worker outlived its agent
