"""Rollout engines: the transformers engine on a tiny model (shapes, seeding, its log-probs equal the
trainer's, where a response ends, no hidden top-k). The vLLM engine: tests/rl/test_rl_vllm.py."""

from __future__ import annotations

import pytest
import torch

from alignops.api.common import Architecture
from alignops.api.rl import RlHyperparameters
from alignops.workloads.data.batching import encode_prompt
from alignops.workloads.evaluation.generation import greedy_completions
from alignops.workloads.models.build import build_model, build_tokenizer
from alignops.workloads.rl.batch import pack, response_logprobs
from alignops.workloads.rollout import EngineInputs, SamplingSettings, engine_traits, make_engine
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
    first = engine.generate(prompts, sampling, seeds=[11, 12, 13])
    assert [len(group) for group in first] == [4, 4, 4]
    assert all(1 <= len(c.token_ids) <= 5 and len(c.logprobs) == len(c.token_ids) for g in first for c in g)
    again = engine.generate(prompts, sampling, seeds=[11, 12, 13])
    assert [[c.token_ids for c in g] for g in again] == [[c.token_ids for c in g] for g in first]
    other = engine.generate(prompts, sampling, seeds=[12, 12, 13])
    assert [[c.token_ids for c in g] for g in other] != [[c.token_ids for c in g] for g in first]
    # two equal prompts in one call are sampled independently
    twins = engine.generate(_prompts("1+2=", "1+2="), sampling, seeds=[5, 6])
    assert [c.token_ids for c in twins[0]] != [c.token_ids for c in twins[1]]


def test_generation_leaves_the_trainers_rng_alone(model):
    engine = TransformersEngine(model, TOKENIZER)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    engine.generate(_prompts("1+2="), SamplingSettings(n=2, max_new_tokens=3), seeds=[99])
    assert torch.equal(torch.rand(3), expected)


def test_engine_logprobs_are_the_trainers(model):
    # the engine samples with left padding and a KV cache; the trainer scores right-padded full
    # sequences: the same log softmax(z / T) of each sampled token up to float noise
    engine = TransformersEngine(model, TOKENIZER)
    prompts = _prompts("1+2=", "30+45=")
    groups = engine.generate(prompts, SamplingSettings(n=3, temperature=0.7, max_new_tokens=6), seeds=[1, 2])
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
    groups = engine.generate(_prompts(*texts), SamplingSettings(greedy=True, max_new_tokens=4), seeds=[0, 1, 2])
    assert [g[0].text for g in groups] == greedy_completions(model, TOKENIZER, texts, max_new_tokens=4)


def test_no_top_k_is_applied(model):
    # transformers applies top_k=50 unless told otherwise; the trainer has no top-k. At a high
    # temperature the first token is near uniform over the 104-token vocabulary: 600 draws from one
    # prompt hit far more than 50 distinct tokens (the expected count is about 101).
    engine = TransformersEngine(model, TOKENIZER, prompts_per_call=1)
    groups = engine.generate(_prompts("1+2="), SamplingSettings(n=600, temperature=20.0, max_new_tokens=1), seeds=[0])
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
    assert not engine_traits("transformers").loads_from_disk and engine_traits("vllm").loads_from_disk
    engine.sleep()  # nothing of its own to give back: still samples
    assert len(engine.generate(_prompts("1+2="), SamplingSettings(n=2, max_new_tokens=2), seeds=[0])[0]) == 2
