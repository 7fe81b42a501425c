"""Checkpoint commits that overlap training (``training/commits.py``, ``TrainLoop.commit``): the
state is taken when the commit starts and later steps never reach it; the main process uploads on
one worker thread, one commit at a time; a stage's final checkpoint holds its weights without the
optimizer state, and a run that finds one resumes from it without asking for that state."""

from __future__ import annotations

import json
import threading
import types

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from alignops.api.hyperparameters import SftHyperparameters
from alignops.contract import DistributedRun
from alignops.storage import list_checkpoints, open_store
from alignops.workloads.context import MetricsSink, RunContext
from alignops.workloads.training.commits import BackgroundCommits
from alignops.workloads.training.engine import host_copy
from alignops.workloads.training.loop import MicroBatchLoss, TrainLoop

IDS = torch.tensor([[1, 5, 7, 2, 9, 3], [4, 4, 8, 1, 0, 6]])


def _model() -> LlamaForCausalLM:
    torch.manual_seed(0)  # tied input and output embeddings, as small Hugging Face models ship
    config = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, max_position_embeddings=16, tie_word_embeddings=True)
    return LlamaForCausalLM(config)


def _loss(model, rows):
    return MicroBatchLoss(model(input_ids=IDS[rows], labels=IDS[rows]).loss, len(rows))


def _context(tmp_path, name: str) -> RunContext:
    config = types.SimpleNamespace(stage_key=f"job/{name}", distributed=DistributedRun())
    return RunContext(config=config, store=open_store(f"file://{tmp_path / 'store'}"), scratch=tmp_path / f"scratch-{name}",
                      metrics=MetricsSink())


def _loop(tmp_path, name: str, steps: int, every: int) -> TrainLoop:
    hp = SftHyperparameters.model_validate({"learningRate": 0.05, "warmupSteps": 0, "lrScheduler": "constant", "batchSize": 2,
                                            "maxSteps": steps, "checkpointEvery": every, "keepCheckpoints": 100, "logEvery": 100})
    return TrainLoop(_context(tmp_path, name), _model(), hp, _loss, lambda directory: None, dataset_size=2)


def test_each_checkpoint_holds_the_weights_of_its_step_while_training_goes_on(tmp_path):
    long = _loop(tmp_path, "long", steps=6, every=2)
    final = long.run()
    short = _loop(tmp_path, "short", steps=2, every=100)
    short.run()
    store = long.ctx.store
    refs = {ref.step: ref for ref in list_checkpoints(store, "job/long")}
    assert sorted(refs) == [2, 4, 6] and final.step == 6 and final.uri == refs[6].uri
    # checkpoint-2 was uploaded while steps 3-6 trained: it holds step 2's weights, which a run of
    # two steps ends with, and not the weights the model had by the time the upload ran
    at_two = load_file(store.local_path(refs[2].key) / "model.safetensors")
    for name, value in short.model.state_dict().items():
        if name in at_two:
            assert torch.equal(at_two[name], value), name
    at_six = load_file(store.local_path(refs[6].key) / "model.safetensors")
    changed = [n for n in at_two if not torch.equal(at_two[n], at_six[n])]
    assert changed  # the later checkpoints did move
    # a checkpoint to resume from holds the optimizer state; the final one only the weights
    assert (store.local_path(refs[4].key) / "optimizer.index.json").exists()
    assert not (store.local_path(refs[6].key) / "optimizer.index.json").exists()
    assert json.loads((store.local_path(refs[6].key) / "trainer_state.json").read_text())["optimizer_state"] is False
    # the tie survives the host copy: one tensor in the file, and the model loads tied
    reloaded = LlamaForCausalLM.from_pretrained(str(store.local_path(refs[6].key)))
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()
    assert torch.equal(reloaded.lm_head.weight, long.model.lm_head.weight)


def test_a_run_that_finds_its_final_checkpoint_resumes_without_optimizer_state(tmp_path):
    first = _loop(tmp_path, "done", steps=3, every=100)
    ref = first.run()
    again = _loop(tmp_path, "done", steps=3, every=100)
    directory = again.ctx.checkpoint_dir(ref)
    again.restore(directory, ref)  # the pod died after the final commit, before its result was written
    assert again.state.step == 3 and again.run() == ref  # nothing left to train or commit


def test_host_copy_keeps_shared_storage_shared_and_apart_from_training():
    weight = torch.nn.Parameter(torch.ones(2, 2))
    copies = host_copy({"embed": weight, "head": weight, "other": torch.zeros(2)})
    assert copies["embed"] is copies["head"]
    with torch.no_grad():
        weight.add_(1.0)
    assert torch.equal(copies["embed"], torch.ones(2, 2))


def test_commits_run_one_at_a_time_on_the_worker_and_report_their_failures():
    commits = BackgroundCommits()
    release, order = threading.Event(), []

    def slow():
        release.wait(timeout=10)
        order.append(("slow", threading.current_thread().name))
        return "first"

    commits.submit(slow)
    assert commits.in_flight and not order  # submit returned while the upload waits
    threading.Timer(0.2, release.set).start()
    commits.submit(lambda: order.append(("next", threading.current_thread().name)))  # waits for the first
    assert order[0][0] == "slow" and order[0][1].startswith("alignops-commit")
    commits.wait()
    assert [name for name, _ in order] == ["slow", "next"]

    def failing():
        raise OSError("disk full")

    commits.submit(failing)
    with pytest.raises(OSError, match="disk full"):
        commits.wait()
    commits.submit(failing)
    commits.drain()  # reported, not raised over the stage's own outcome
    assert not commits.in_flight
