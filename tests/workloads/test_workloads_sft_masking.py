"""SFT learns response tokens only: the prompt is masked, by construction and in the loss."""

from __future__ import annotations

import math

import torch

from alignops.algos.sft import masked_lm_loss
from alignops.algos import IGNORE_INDEX
from alignops.workloads.data.sft import tokenize_sft
from alignops.workloads.models.build import build_tokenizer


def test_prompt_tokens_are_masked_and_eos_is_learnt():
    tokenizer = build_tokenizer()
    example = tokenize_sft({"prompt": "1+2=", "completion": "3"}, tokenizer, max_length=64)
    # <s> 1 + 2 = | 3 </s>: five masked positions (bos and the 4 prompt characters), then the response
    assert example.input_ids == [tokenizer.bos_token_id, *tokenizer("1+2=3", add_special_tokens=False).input_ids, tokenizer.eos_token_id]
    assert example.labels == [IGNORE_INDEX] * 5 + [tokenizer.convert_tokens_to_ids("3"), tokenizer.eos_token_id]


def test_loss_on_a_hand_checked_example_ignores_the_prompt():
    tokenizer = build_tokenizer()
    example = tokenize_sft({"prompt": "1+2=", "completion": "3"}, tokenizer, max_length=64)
    vocab = len(tokenizer)
    input_ids = torch.tensor([example.input_ids])
    labels = torch.tensor([example.labels])
    logits = torch.zeros(1, len(example.input_ids), vocab)
    # position 4 ('=') predicts '3' and position 5 ('3') predicts '</s>'; give each target logit 2
    logits[0, 4, example.labels[5]] = 2.0
    logits[0, 5, example.labels[6]] = 2.0
    # each of the 2 response tokens: -log(e^2 / (e^2 + (V - 1)))
    expected = -math.log(math.exp(2) / (math.exp(2) + vocab - 1))
    assert torch.isclose(masked_lm_loss(logits, labels), torch.tensor(expected), atol=1e-6)
    # logits at prompt positions 0..3 predict masked labels: changing them changes nothing
    noisy = logits.clone()
    noisy[0, :4] = torch.randn(4, vocab) * 10
    assert torch.isclose(masked_lm_loss(noisy, labels), torch.tensor(expected), atol=1e-6)
    assert input_ids.shape == labels.shape


def test_truncation_keeps_labels_aligned():
    tokenizer = build_tokenizer()
    example = tokenize_sft({"prompt": "x" * 10, "completion": "abc"}, tokenizer, max_length=12)
    assert len(example.input_ids) == len(example.labels) == 12
    assert example.labels[-1] == tokenizer.convert_tokens_to_ids("a")
