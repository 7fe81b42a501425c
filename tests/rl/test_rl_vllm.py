"""The vllm rollout engine against tests/rl/fake_vllm.py (vLLM 0.33.0's signatures, strict keywords;
vLLM itself cannot be installed here): what it starts the engine with, per-prompt seeds, the
colocated sleep / wake / reload cycle, the split rollout run loading no trainer copy, and a whole
colocated stage run through the fake."""

from __future__ import annotations

import json
import os
import signal
import types

import pytest
import torch

import fake_vllm
from alignops.api.common import Architecture
from alignops.api.generate import GenerateHyperparameters
from alignops.api.rl import RlHyperparameters
from alignops.seeds import SAMPLE
from alignops.workloads.context import ConfigError
from alignops.workloads.data.batching import encode_prompt
from alignops.workloads.models.build import build_model, build_tokenizer
from alignops.workloads.rl import sampling as rl_sampling
from alignops.workloads.rl.sampling import engine_extra, engine_for, prompt_seeds, rollout_policy
from alignops.workloads.rollout import SamplingSettings
from alignops.workloads.rollout.vllm_engine import SEED_RANGE, SLEEP_LEVEL

TOKENIZER = build_tokenizer()
DIST_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _model(max_positions: int = 48):
    arch = {"hiddenSize": 32, "layers": 1, "heads": 2, "maxPositions": max_positions, "seed": 3}
    return build_model(Architecture.model_validate(arch), TOKENIZER)


@pytest.fixture
def vllm(monkeypatch):
    """The fake as ``vllm``; the torch.distributed variables the engine sets are put back after."""
    fake_vllm.install(monkeypatch)
    saved = {key: os.environ.get(key) for key in DIST_ENV}
    yield fake_vllm
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def saved_model(tmp_path):
    model = _model()
    model.save_pretrained(str(tmp_path / "start"))
    TOKENIZER.save_pretrained(str(tmp_path / "start"))
    return model, tmp_path / "start"


def _engine(hp: dict, model, directory, tmp_path):
    hp = RlHyperparameters.model_validate({"engine": "vllm", **hp})
    ctx = types.SimpleNamespace(scratch=tmp_path)
    return engine_for(ctx, hp, model, TOKENIZER, directory)


def test_fake_is_strict_like_vllm(vllm, saved_model):
    # what makes the tests below able to fail: a keyword vLLM 0.33 lacks raises, as it would there
    _, directory = saved_model
    os.environ.setdefault("RANK", "0"), os.environ.setdefault("LOCAL_RANK", "0")
    with pytest.raises(TypeError, match="max_model_length"):
        vllm.LLM(model=str(directory), max_model_length=32)
    with pytest.raises(TypeError):
        vllm.SamplingParams(n=2, max_new_tokens=4)
    with pytest.raises(ValueError, match="greater than the derived max_model_len"):
        vllm.LLM(model=str(directory), max_model_len=49)  # the model's context is 48
    with pytest.raises(ValueError, match="n must be 1 when using greedy"):
        vllm.SamplingParams(n=2, temperature=0.0)


def test_engine_starts_with_the_stages_budget_dtype_and_seed(vllm, saved_model, tmp_path):
    model, directory = saved_model
    _engine({"maxPromptLength": 20, "maxNewTokens": 8, "gpuMemoryUtilization": 0.4, "seed": 3, "precision": "fp32"},
            model, directory, tmp_path)
    llm = vllm.LLM.instances[-1]
    # prompt + response budget (28), not the model's context (48)
    assert llm.kwargs["max_model_len"] == 28
    assert llm.kwargs["model"] == str(directory) and llm.kwargs["gpu_memory_utilization"] == 0.4
    assert llm.kwargs["dtype"] == "float32" and llm.kwargs["seed"] == 3
    assert llm.kwargs["logprobs_mode"] == "processed_logprobs"
    assert llm.kwargs["distributed_executor_backend"] == "external_launcher"
    assert llm.kwargs["enable_sleep_mode"] is True  # colocated: it must give memory back for the update
    # split placement: a rollout run of its own, nothing to give back to
    _engine({"placement": "split"}, model, directory, tmp_path)
    assert vllm.LLM.instances[-1].kwargs["enable_sleep_mode"] is False
    # a budget beyond the model's context is cut to the context: default 512 + 64 > 48
    _engine({}, model, directory, tmp_path)
    assert vllm.LLM.instances[-1].kwargs["max_model_len"] == 48


def test_dtype_follows_precision():
    config = types.SimpleNamespace(max_position_embeddings=4096)
    gpu = torch.device("cuda")  # autocast_dtype only looks at the device type for bf16 / fp32
    bf16 = engine_extra(RlHyperparameters.model_validate({"precision": "bf16"}), config, gpu)
    fp32 = engine_extra(RlHyperparameters.model_validate({"precision": "fp32"}), config, gpu)
    assert (bf16["dtype"], bf16["autocast"]) == ("bfloat16", torch.bfloat16)
    assert (fp32["dtype"], fp32["autocast"]) == ("float32", None)
    # on a CPU bf16 is honoured too (autocast), and auto is fp32 there
    cpu = torch.device("cpu")
    assert engine_extra(RlHyperparameters.model_validate({"precision": "bf16"}), config, cpu)["dtype"] == "bfloat16"
    assert engine_extra(RlHyperparameters.model_validate({"precision": "auto"}), config, cpu)["dtype"] == "float32"


def test_samples_are_independent_per_prompt_and_reproducible(vllm, saved_model, tmp_path):
    model, directory = saved_model
    engine = _engine({"samplesPerPrompt": 3}, model, directory, tmp_path)
    hp = RlHyperparameters.model_validate({"seed": 5})
    prompt = encode_prompt(TOKENIZER, "12+30=")
    sampling = SamplingSettings(n=3, temperature=1.0, max_new_tokens=6)
    seeds = prompt_seeds(hp, round_=2, pass_=0, count=2)
    groups = engine.generate([prompt, prompt], sampling, seeds)
    samples = [tuple(c.token_ids) for g in groups for c in g]
    # two equal prompts: six different samples (one batch seed gave the j-th of each the same noise)
    assert len(set(samples)) == 6
    params = vllm.LLM.instances[-1].calls[-1][2]
    requested = [p.seed for p in params]
    assert requested == [s % SEED_RANGE for s in seeds] and all(p.n == 3 for p in params)
    # vLLM draws sample j with seed + j (int64): no sample of one prompt shares a seed with another's
    drawn = [s + j for s in requested for j in range(3)]
    assert len(set(drawn)) == 6 and abs(requested[1] - requested[0]) >= SAMPLE and max(drawn) < 2**63
    # a rerun (or the other placement) draws the same samples
    again = engine.generate([prompt, prompt], sampling, prompt_seeds(hp, round_=2, pass_=0, count=2))
    assert [tuple(c.token_ids) for g in again for c in g] == samples
    # control: the fake does give equal samples to equal seeds, so the first check can fail
    same = engine.generate([prompt, prompt], sampling, [seeds[0], seeds[0]])
    assert [c.token_ids for c in same[0]] == [c.token_ids for c in same[1]]


def test_requests_and_outputs_map_onto_completions(vllm, saved_model, tmp_path):
    model, directory = saved_model
    engine = _engine({}, model, directory, tmp_path)
    groups = engine.generate([[1, 2], [1, 3]], SamplingSettings(n=2, temperature=0.7, top_p=0.9, max_new_tokens=5, stop=("\n",)),
                             [8, 9])
    llm = vllm.LLM.instances[-1]
    _, prompts, params = llm.calls[-1]
    assert prompts == [{"prompt_token_ids": [1, 2]}, {"prompt_token_ids": [1, 3]}]
    first = params[0]
    assert (first.n, first.temperature, first.top_p, first.max_tokens, first.stop) == (2, 0.7, 0.9, 5, ["\n"])
    assert first.include_stop_str_in_output and first.logprobs == 0
    assert all(len(g) == 2 and len(g[0].token_ids) == 5 for g in groups)
    # the sampled token's log-prob is picked out of each step's dict
    assert groups[0][0].logprobs == [-0.25, -0.5, -0.75, -1.0, -1.25] and groups[0][0].finish_reason == "length"
    greedy = engine.generate([[1]], SamplingSettings(greedy=True, max_new_tokens=2), [0])
    assert llm.calls[-1][2][0].temperature == 0.0 and len(greedy[0]) == 1


def _perturbed(model):
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.01)
    return model


def test_colocated_round_sleeps_then_wakes_and_reloads_the_trainers_weights(vllm, saved_model, tmp_path):
    model, directory = saved_model
    engine = _engine({"precision": "fp32"}, model, directory, tmp_path)
    llm = vllm.LLM.instances[-1]
    prompts, sampling = [[1, 2]], SamplingSettings(n=2, max_new_tokens=3)
    engine.generate(prompts, sampling, [1])
    engine.sleep()  # before the policy update
    with pytest.raises(RuntimeError, match="sleep"):  # the fake refuses to sample asleep, as the engine never does
        llm.generate([{"prompt_token_ids": [1]}])
    _perturbed(model)  # the update
    llm.calls.clear()
    engine.update_weights(model)
    assert llm.calls == [("wake_up", ("weights",)), ("collective_rpc", "reload_weights"), ("wake_up", ("kv_cache",)),
                         ("reset_prefix_cache",)]
    assert not llm.sleeping and engine.generate(prompts, sampling, [1])
    # the engine now holds the trainer's weights under the checkpoint's names (tied lm_head: not sent, not stored)
    expected = {name: param.detach() for name, param in model.named_parameters()}
    assert set(llm.worker.weights) == set(expected)
    assert all(torch.equal(llm.worker.weights[name], expected[name]) for name in expected)
    assert SLEEP_LEVEL == 1 and ("sleep", 1) not in llm.calls
    engine.sleep()
    assert llm.calls[-1] == ("sleep", 1)


def test_split_engine_never_sleeps(vllm, saved_model, tmp_path):
    model, directory = saved_model
    engine = _engine({"placement": "split"}, model, directory, tmp_path)
    engine.sleep()
    assert not vllm.LLM.instances[-1].sleeping


def test_a_model_whose_names_the_checkpoint_lacks_is_refused(vllm, saved_model, tmp_path):
    _, directory = saved_model
    other = _model()
    other.model.layers[0].mlp.register_parameter("extra", torch.nn.Parameter(torch.zeros(2)))
    engine = _engine({}, other, directory, tmp_path)
    with pytest.raises(ConfigError, match="model.layers.0.mlp.extra"):
        engine.update_weights(other)
    assert vllm.LLM.instances[-1].worker.reloads == 0


def test_split_rollout_run_loads_no_trainer_copy(vllm, saved_model, tmp_path, monkeypatch):
    _, directory = saved_model
    monkeypatch.setattr(rl_sampling, "starting_policy", lambda ctx: pytest.fail("loaded the trainer's model"))
    ctx = types.SimpleNamespace(latest=lambda: None, scratch=tmp_path,
                                config=types.SimpleNamespace(inputs=types.SimpleNamespace(policy="file:///in"),
                                                             base_model=types.SimpleNamespace(trust_remote_code=False, chat_template=None)))
    monkeypatch.setattr(rl_sampling, "model_directory", lambda ctx, uri: directory)
    hp = RlHyperparameters.model_validate({"engine": "vllm", "placement": "split", "maxPromptLength": 16, "maxNewTokens": 8})
    start = rollout_policy(ctx, hp)
    assert start.model is None and start.directory == directory and start.tokenizer is not None
    engine = engine_for(ctx, hp, start.model, start.tokenizer, start.directory)
    llm = vllm.LLM.instances[-1]
    assert llm.kwargs["model"] == str(directory) and llm.kwargs["max_model_len"] == 24
    assert engine.generate([[1, 2]], SamplingSettings(n=1, max_new_tokens=2), [0])[0][0].token_ids


@pytest.mark.parametrize("model", [RlHyperparameters, GenerateHyperparameters], ids=["rl", "generate"])
def test_vllm_temperature_above_two_is_refused_at_validation(model):
    with pytest.raises(ValueError, match="engine vllm samples at temperatures up to 2"):
        model.model_validate({"engine": "vllm", "temperature": 3})
    assert model.model_validate({"engine": "transformers", "temperature": 3}).temperature == 3
    assert model.model_validate({"engine": "vllm", "temperature": 2}).temperature == 2


def test_vllm_missing_is_a_configuration_error(monkeypatch, saved_model, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    model, directory = saved_model
    with pytest.raises(ConfigError, match="engine vllm needs the vllm package"):
        _engine({}, model, directory, tmp_path)


@pytest.mark.slow
def test_a_colocated_vllm_stage_runs_through_the_fake(vllm, tmp_path, monkeypatch):
    # the stage's own loop: round 1 syncs (nothing asleep), samples, sleeps for the update; round 2
    # wakes the weights, reloads, wakes the KV cache, samples, sleeps
    from alignops.workloads.entrypoint import main
    from rl_stage_helpers import rl_job, write_config

    config = write_config(rl_job(engine="vllm", maxPromptLength=12, evalSize=4), tmp_path / "storage", tmp_path)
    for key, value in {"ALIGNOPS_SCRATCH": tmp_path, "ALIGNOPS_RESULT_PATH": tmp_path / "result.json"}.items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.delenv("ALIGNOPS_METRICS_PORT", raising=False)
    monkeypatch.setenv("ALIGNOPS_METRICS_LOG", str(tmp_path / "metrics.jsonl"))
    original = signal.getsignal(signal.SIGTERM)
    try:
        code = main([str(config)])
    finally:
        signal.signal(signal.SIGTERM, original)
    assert code == 0, (tmp_path / "result.json").read_text()
    llm = vllm.LLM.instances[-1]
    assert llm.kwargs["max_model_len"] == 16 and llm.kwargs["enable_sleep_mode"]
    names = [call[0] if call[0] != "collective_rpc" else call[1] for call in llm.calls]
    sync = ["wake_up", "reload_weights", "wake_up", "reset_prefix_cache"]
    assert names == ["reload_weights", "reset_prefix_cache", "generate", "sleep", *sync, "generate", "sleep"]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records if "logprob_gap" in r] == [1, 2]
