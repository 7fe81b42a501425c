"""Rollout engines: the transformers engine on a tiny model (shapes, seeding, its log-probs equal the
trainer's, where a response ends, no hidden top-k), and the vLLM adapter against a stand-in module
with vLLM's documented shapes (vLLM itself cannot be installed here)."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from alignops.api.common import Architecture
from alignops.api.rl import RlHyperparameters
from alignops.workloads.context import ConfigError
from alignops.workloads.data.batching import encode_prompt
from alignops.workloads.evaluation.generation import greedy_completions
from alignops.workloads.models.build import build_model, build_tokenizer
from alignops.workloads.rl.batch import pack, response_logprobs
from alignops.workloads.rollout import EngineInputs, SamplingSettings, make_engine
from alignops.workloads.rollout.hf import TransformersEngine

TOKENIZER = build_tokenizer()


@pytest.fixture(scope="module")
def model():
    return build_model(Architecture.model_validate({"hiddenSize": 32, "layers": 1, "heads": 2, "maxPositions": 48, "seed": 3}), TOKENIZER)


def _prompts(*texts):
    return [encode_prompt(TOKENIZER, t) for t in texts]


def test_n_samples_per_prompt_in_prompt_order_and_seeded(model):
    engine = TransformersEngine(model, TOKENIZER, prompts_per_call=2)
    prompts = _prompts("1+2=", "30+45=", "7+7=")
    sampling = SamplingSettings(n=4, temperature=1.0, max_new_tokens=5)
    first = engine.generate(prompts, sampling, seed=11)
    assert [len(group) for group in first] == [4, 4, 4]
    assert all(1 <= len(c.token_ids) <= 5 and len(c.logprobs) == len(c.token_ids) for g in first for c in g)
    again = engine.generate(prompts, sampling, seed=11)
    assert [[c.token_ids for c in g] for g in again] == [[c.token_ids for c in g] for g in first]
    other = engine.generate(prompts, sampling, seed=12)
    assert [[c.token_ids for c in g] for g in other] != [[c.token_ids for c in g] for g in first]


def test_generation_leaves_the_trainers_rng_alone(model):
    engine = TransformersEngine(model, TOKENIZER)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    engine.generate(_prompts("1+2="), SamplingSettings(n=2, max_new_tokens=3), seed=99)
    assert torch.equal(torch.rand(3), expected)


def test_engine_logprobs_are_the_trainers(model):
    # the engine samples with left padding and a KV cache; the trainer scores right-padded full
    # sequences: the same log softmax(z / T) of each sampled token up to float noise
    engine = TransformersEngine(model, TOKENIZER)
    prompts = _prompts("1+2=", "30+45=")
    groups = engine.generate(prompts, SamplingSettings(n=3, temperature=0.7, max_new_tokens=6), seed=1)
    completions = [c for g in groups for c in g]
    batch = pack([prompts[i // 3] for i in range(6)], [c.token_ids for c in completions], TOKENIZER.pad_token_id, "cpu")
    with torch.no_grad():
        trainer, _ = response_logprobs(model, batch, temperature=0.7)
    for row, c in enumerate(completions):
        columns = batch.response_mask[row].nonzero().squeeze(-1)
        assert torch.allclose(trainer[row, columns], torch.tensor(c.logprobs), atol=1e-4)


def test_greedy_matches_the_evaluation_greedy(model):
    engine = TransformersEngine(model, TOKENIZER)
    texts = ["1+2=", "30+45=", "7+7="]
    groups = engine.generate(_prompts(*texts), SamplingSettings(greedy=True, max_new_tokens=4), seed=0)
    assert [g[0].text for g in groups] == greedy_completions(model, TOKENIZER, texts, max_new_tokens=4)


def test_no_top_k_is_applied(model):
    # transformers applies top_k=50 unless told otherwise; the trainer has no top-k. At a high
    # temperature the first token is near uniform over the 104-token vocabulary: 600 draws from one
    # prompt hit far more than 50 distinct tokens (the expected count is about 101).
    engine = TransformersEngine(model, TOKENIZER, prompts_per_call=1)
    groups = engine.generate(_prompts("1+2="), SamplingSettings(n=600, temperature=20.0, max_new_tokens=1), seed=0)
    assert len({c.token_ids[0] for c in groups[0]}) > 60


def test_where_a_response_ends():
    engine = TransformersEngine(None, TOKENIZER)
    ids = lambda text: TOKENIZER(text, add_special_tokens=False).input_ids  # noqa: E731
    eos, pad = TOKENIZER.eos_token_id, TOKENIZER.pad_token_id
    # eos ends it (kept); generate's padding after it is not part of the response
    assert engine._response_length(ids("12") + [eos, pad, pad], ()) == (3, True)
    # a stop string ends it at the token that completes it (kept)
    assert engine._response_length(ids("12\n34"), ("\n",)) == (3, True)
    assert engine._response_length(ids("12;;34"), (";;",)) == (4, True)
    # neither: cut at the limit
    assert engine._response_length(ids("1234"), ("\n",)) == (4, False)


def test_make_engine_by_name(model):
    hp = RlHyperparameters.model_validate({"generationBatchSize": 7})
    engine = make_engine("transformers", EngineInputs(model=model, tokenizer=TOKENIZER, model_dir=lambda: None, hyperparameters=hp))
    assert engine.name == "transformers" and engine.prompts_per_call == 7


# -- vLLM, against a stand-in with the documented API ---------------------------------------------
class _Logprob:
    def __init__(self, logprob):
        self.logprob = logprob


class _FakeLLM:
    instances: list = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.loaded: list = []
        self.cache_resets = 0
        self.calls: list = []
        runner = types.SimpleNamespace(model=types.SimpleNamespace(load_weights=lambda w: self.loaded.append(list(w))))
        self.llm_engine = types.SimpleNamespace(model_executor=types.SimpleNamespace(driver_worker=types.SimpleNamespace(model_runner=runner)))
        _FakeLLM.instances.append(self)

    def generate(self, prompts, sampling_params=None, use_tqdm=True):
        self.calls.append((prompts, sampling_params))
        outputs = []
        for i, _ in enumerate(prompts):
            completions = []
            for j in range(sampling_params.kwargs["n"]):
                ids = [40 + i, 50 + j]
                completions.append(types.SimpleNamespace(
                    token_ids=tuple(ids), text=f"r{i}{j}", finish_reason="length" if j else "stop",
                    logprobs=[{t: _Logprob(-0.5 * (k + 1)), 99: _Logprob(-9.0)} for k, t in enumerate(ids)]))
            outputs.append(types.SimpleNamespace(outputs=completions))
        return outputs

    def reset_prefix_cache(self):
        self.cache_resets += 1

    def collective_rpc(self, method, args=()):
        self.calls.append(("rpc", method, args))


class _FakeSamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = _FakeLLM, _FakeSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    _FakeLLM.instances.clear()
    return module


def test_vllm_engine_maps_settings_and_outputs(fake_vllm, tmp_path, model):
    hp = RlHyperparameters.model_validate({"engine": "vllm", "gpuMemoryUtilization": 0.4, "seed": 3})
    engine = make_engine("vllm", EngineInputs(model=model, tokenizer=TOKENIZER, model_dir=lambda: tmp_path, hyperparameters=hp,
                                              extra={"max_model_len": 48}))
    llm = _FakeLLM.instances[-1]
    assert llm.kwargs["model"] == str(tmp_path) and llm.kwargs["gpu_memory_utilization"] == 0.4
    assert llm.kwargs["logprobs_mode"] == "processed_logprobs" and llm.kwargs["max_model_len"] == 48
    groups = engine.generate([[1, 2], [1, 3]], SamplingSettings(n=2, temperature=0.7, top_p=0.9, max_new_tokens=5, stop=("\n",)), seed=8)
    prompts, params = llm.calls[-1]
    assert prompts == [{"prompt_token_ids": [1, 2]}, {"prompt_token_ids": [1, 3]}]
    assert params.kwargs == {"n": 2, "temperature": 0.7, "top_p": 0.9, "max_tokens": 5, "stop": ["\n"],
                             "include_stop_str_in_output": True, "logprobs": 0, "seed": 8}
    assert [[c.token_ids for c in g] for g in groups] == [[[40, 50], [40, 51]], [[41, 50], [41, 51]]]
    # the sampled token's log-prob is picked out of each step's dict
    assert groups[0][0].logprobs == [-0.5, -1.0]
    assert [c.finish_reason for c in groups[0]] == ["stop", "length"]
    greedy = engine.generate([[1]], SamplingSettings(greedy=True, max_new_tokens=2), seed=0)
    assert llm.calls[-1][1].kwargs["temperature"] == 0.0 and len(greedy[0]) == 1


def test_vllm_engine_loads_the_trainers_weights_in_process(fake_vllm, tmp_path, model):
    hp = RlHyperparameters.model_validate({"engine": "vllm"})
    engine = make_engine("vllm", EngineInputs(model=model, tokenizer=TOKENIZER, model_dir=lambda: tmp_path, hyperparameters=hp))
    llm = _FakeLLM.instances[-1]
    engine.update_weights(model)
    assert [name for name, _ in llm.loaded[0]] == [name for name, _ in model.named_parameters()]
    assert llm.cache_resets == 1
    # without an in-process model runner the weights go through collective_rpc
    del llm.llm_engine.model_executor.driver_worker.model_runner
    engine.update_weights(model)
    rpc = [c for c in llm.calls if c[0] == "rpc"]
    assert len(rpc) == 1 and callable(rpc[0][1]) and rpc[0][2][0][0][0] == next(iter(model.state_dict()))
    assert llm.cache_resets == 2


def test_vllm_missing_is_a_configuration_error(monkeypatch, tmp_path, model):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    hp = RlHyperparameters.model_validate({"engine": "vllm"})
    with pytest.raises(ConfigError, match="engine vllm needs the vllm package"):
        make_engine("vllm", EngineInputs(model=model, tokenizer=TOKENIZER, model_dir=lambda: tmp_path, hyperparameters=hp))
