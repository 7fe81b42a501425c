"""Reward functions of the rl stage on hand-made batches, each value derived in a comment."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.testing import assert_close
from transformers import LlamaConfig, LlamaForSequenceClassification

from alignops.api.rl import RewardTerm
from alignops.workloads.context import ConfigError
from alignops.workloads.models.build import build_tokenizer
from alignops.workloads.data.sft import reward_example
from alignops.workloads.models.scoring import reward_scores
from alignops.workloads.rl.rewards import RewardMix, RewardResources, ScoringBatch, default_terms


def _batch(responses, answers=None, lengths=None, groups=None, max_new_tokens=6):
    n = len(responses)
    return ScoringBatch(
        prompts=["1+2="] * n, responses=responses, answers=answers or ["3"] * n,
        lengths=torch.tensor(lengths or [len(r) for r in responses]),
        group_ids=torch.tensor(groups or [0] * n), max_new_tokens=max_new_tokens,
    )


def _term(name, weight=1.0, **options):
    return RewardTerm.model_validate({"name": name, "weight": weight, **({"options": options} if options else {})})


def _mix(*terms, resources=None):
    return RewardMix(list(terms), resources or RewardResources())


def test_exact_answer_reads_the_leading_number():
    # "3" and "3 apples" start with 3; "33" is a different number; " 3" is stripped first
    total, parts = _mix(_term("exact_answer"))(_batch(["3", "3 apples", "33", " 3", "x3"]))
    assert total.tolist() == [1.0, 1.0, 0.0, 1.0, 0.0]
    assert parts["exact_answer"].tolist() == total.tolist()


def test_exact_answer_needs_answers():
    batch = _batch(["3"])
    batch.answers = [None]
    with pytest.raises(ConfigError, match="need an `answer`"):
        _mix(_term("exact_answer"))(batch)


def test_regex_search_and_full_match():
    responses = ["42", "answer: 42", "42!"]
    search, _ = _mix(_term("regex", pattern=r"\d+"))(_batch(responses))
    full, _ = _mix(_term("regex", pattern=r"\d+", fullMatch=True))(_batch(responses))
    assert search.tolist() == [1.0, 1.0, 1.0]  # digits somewhere in each
    assert full.tolist() == [1.0, 0.0, 0.0]  # only "42" is digits and nothing else


def test_length_penalty():
    # -max(0, T - free) / maxNewTokens with free 3, max 6: T=2 -> 0; T=5 -> -2/6; T=9 -> -6/6
    total, _ = _mix(_term("length_penalty", freeTokens=3))(_batch(["a", "b", "c"], lengths=[2, 5, 9]))
    assert_close(total, torch.tensor([0.0, -2 / 6, -1.0]))


def test_kimi_length_within_groups():
    # group 0: lengths 2, 4, 6 -> lambda = 0.5 - (len - 2) / 4 = 0.5, 0, -0.5; the first two are
    # correct ("3"), the third wrong: correct keep lambda, wrong get min(0, lambda) = -0.5.
    # group 1: lengths 3, 3 -> no spread -> 0 for both.
    batch = _batch(["3", "3", "4", "3", "5"], lengths=[2, 4, 6, 3, 3], groups=[0, 0, 0, 1, 1])
    total, _ = _mix(_term("kimi_length"))(batch)
    assert_close(total, torch.tensor([0.5, 0.0, -0.5, 0.0, 0.0]))


def test_weighted_sum_of_terms():
    # exact (weight 1) + length penalty (weight 0.5, free 0, max 4): "3" T=1 -> 1 - 0.5/4 = 0.875;
    # "9" T=2 -> 0 - 0.5 * 2/4 = -0.25
    mix = _mix(_term("exact_answer"), _term("length_penalty", weight=0.5))
    total, parts = mix(_batch(["3", "9"], lengths=[1, 2], max_new_tokens=4))
    assert_close(total, torch.tensor([0.875, -0.25]))
    assert set(parts) == {"exact_answer", "length_penalty"}


def test_default_terms():
    assert [t.name for t in default_terms(False)] == ["exact_answer"]
    assert [t.name for t in default_terms(True)] == ["reward_model"]


def test_reward_model_scores_like_the_reward_stage(tmp_path):
    # a reward checkpoint as the reward stage saves it: sequence classifier, num_labels=1, tokenizer
    tokenizer = build_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                         pad_token_id=tokenizer.pad_token_id, num_labels=1)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config).eval()
    model.save_pretrained(str(tmp_path))
    tokenizer.save_pretrained(str(tmp_path))
    mix = _mix(_term("reward_model"), resources=RewardResources(reward_model_dir=tmp_path, batch_size=2))
    batch = _batch(["3", "12", "7"])
    total, _ = mix(batch)
    # the same numbers the reward stage's own scoring gives for bos + prompt + response + eos
    examples = [reward_example("1+2=", r, tokenizer, 32) for r in ["3", "12", "7"]]
    with torch.no_grad():
        expected = reward_scores(copy.deepcopy(model), examples, tokenizer.pad_token_id)
    assert_close(total, expected)
    assert len(set(total.tolist())) == 3  # the head really reads each response


def test_reward_model_needs_its_input():
    with pytest.raises(ConfigError, match="rewardModel input"):
        _mix(_term("reward_model"))
