"""The parts of multi-process training that need no second process: how a run's processes are
resolved from the spec, how the agent turns its workers' exit codes into the run's, the by-name
optimizer state format, and the collectives of a world of one."""

from __future__ import annotations

import signal

import pytest
import torch

from alignops.api import parse_job
from alignops.planner import Defaults, initial_status, resolve_run
from alignops.workloads.distributed import SINGLE
from alignops.workloads.launch import exit_code_of
from alignops.workloads.training.optimizer_state import OptimizerStateReader, write_optimizer_state


def _config(stage_extra: dict, role: str = "all"):
    stage = {"name": "s", "type": "sft", "datasets": {"train": {"generator": "arithmetic"}}, **stage_extra}
    job = parse_job({"apiVersion": "alignops.io/v1alpha1", "kind": "AlignmentJob", "metadata": {"name": "j"},
                     "spec": {"model": {"architecture": {}}, "stages": [stage]}})
    return resolve_run(job, initial_status(job), "s", 1, Defaults(storage_uri="file:///tmp/x"), role)


@pytest.mark.parametrize("extra, expected", [
    ({}, (1, None)),                                                     # one process: plain PyTorch
    ({"resources": {"gpus": 1}}, (1, None)),
    ({"resources": {"gpus": 4}}, (4, 2)),                                # several: ZeRO-2 by default
    ({"resources": {"gpus": 2}, "distributed": {"zeroStage": 3}}, (2, 3)),
    ({"resources": {"gpus": 1}, "distributed": {"offloadOptimizer": True}}, (1, 2)),  # an offload needs DeepSpeed
    ({"resources": {"gpus": 1}, "distributed": {"zeroStage": 3, "offloadParameters": True}}, (1, 3)),
])
def test_the_planner_resolves_processes_and_zero_stage(extra, expected):
    run = _config(extra).distributed
    assert (run.world_size, run.zero_stage) == expected


def test_a_split_rollout_run_samples_in_one_process():
    stage = {"name": "s", "type": "rl", "datasets": {"train": {"generator": "arithmetic"}}, "resources": {"gpus": 4},
             "hyperparameters": {"placement": "split", "rounds": 2}}
    job = parse_job({"apiVersion": "alignops.io/v1alpha1", "kind": "AlignmentJob", "metadata": {"name": "j"},
                     "spec": {"model": {"architecture": {}}, "stages": [stage]}})
    defaults = Defaults(storage_uri="file:///tmp/x")
    assert resolve_run(job, initial_status(job), "s", 1, defaults, "rollout", 1).distributed.world_size == 1
    assert resolve_run(job, initial_status(job), "s", 1, defaults, "train", 1).distributed.world_size == 4


@pytest.mark.parametrize("codes, run_code", [
    ([0, 0], 0),
    ([78, -signal.SIGTERM], 78),        # a configuration error wins: the others were stopped by the agent
    ([1, 143], 1),                      # a crash, then its peer stopped: a failed attempt
    ([143, 143], 143),                  # SIGTERM: every rank committed with rank 0 and stopped
    ([143, -signal.SIGTERM], 143),
    ([-signal.SIGKILL, 0], 1),          # killed (OOM): worth a retry
])
def test_the_agent_reports_its_workers_as_one_exit_code(codes, run_code):
    assert exit_code_of(codes) == run_code


def test_optimizer_state_round_trips_by_name_in_shards(tmp_path):
    torch.manual_seed(0)
    states = {f"layer{i}.weight": {"exp_avg": torch.randn(8, 4), "exp_avg_sq": torch.rand(8, 4)} for i in range(5)}
    # a parameter's state is 2 x 32 floats = 256 bytes; a shard is written once it reaches 300
    # bytes: two parameters per file, the fifth alone
    write_optimizer_state(tmp_path, iter(states.items()), step=7, shard_bytes=300)
    assert len(list(tmp_path.glob("optimizer-*.safetensors"))) == 3
    reader = OptimizerStateReader(tmp_path)
    assert reader.step == 7 and reader.names() == set(states)
    for name, state in states.items():
        for key, value in reader.state(name).items():
            assert torch.equal(value, state[key])


def test_a_world_of_one_has_identity_collectives():
    assert SINGLE.is_main and not SINGLE.distributed
    assert SINGLE.sum_floats({"loss": 1.5}) == {"loss": 1.5}
    assert SINGLE.any(False) is False and SINGLE.any(True) is True
    assert SINGLE.share([4, 5, 6]) == [4, 5, 6]
    rows = SINGLE.shared_rows(3, lambda positions: [torch.tensor(positions, dtype=torch.float32).unsqueeze(1), None])
    assert rows[0].squeeze(1).tolist() == [0.0, 1.0, 2.0] and rows[1] is None
    assert SINGLE.on_node_leader(lambda: "fetched") == "fetched"
