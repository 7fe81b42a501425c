import math

import pytest
import torch
from torch.testing import assert_close

from alignops.algos import (
    UnknownNameError,
    entropy_from_logits,
    last_valid_index,
    masked_mean,
    masked_var,
    masked_whiten,
    next_token_logprobs,
    place_on_last_token,
    sequence_logprob,
    token_logprobs,
)

LN2, LN3 = math.log(2), math.log(3)


def test_token_logprobs_hand_computed():
    # logits [0, 0, ln 2] -> softmax = [1, 1, 2] / 4 = [1/4, 1/4, 1/2] at every position.
    logits = torch.tensor([[0.0, 0.0, LN2]]).repeat(3, 1).unsqueeze(0)  # (1, 3, 3)
    labels = torch.tensor([[2, 0, -100]])
    out = token_logprobs(logits, labels)
    assert_close(out, torch.tensor([[math.log(0.5), math.log(0.25), 0.0]]))


def test_token_logprobs_ignores_garbage_at_ignored_positions():
    logits = torch.zeros(1, 2, 4)
    logits[0, 1] = float("nan")  # whatever sits under a -100 label must not leak
    out = token_logprobs(logits, torch.tensor([[3, -100]]))
    assert_close(out, torch.tensor([[-math.log(4), 0.0]]))  # uniform over 4 tokens


def test_token_logprobs_matches_log_softmax_gather_and_upcasts_bf16():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11)
    labels = torch.randint(0, 11, (3, 5))
    ref = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    assert_close(token_logprobs(logits, labels), ref)
    bf16 = logits.to(torch.bfloat16)
    out = token_logprobs(bf16, labels)
    assert out.dtype == torch.float32  # computed in fp32, not bf16
    ref_bf16 = torch.log_softmax(bf16.float(), -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    assert_close(out, ref_bf16)


def test_token_logprobs_gradient_is_softmax_minus_onehot():
    # d log p(y) / d z = onehot(y) - softmax(z); with z = 0 over V = 2 that is [+1/2, -1/2].
    logits = torch.zeros(1, 1, 2, requires_grad=True)
    token_logprobs(logits, torch.tensor([[0]])).sum().backward()
    assert_close(logits.grad, torch.tensor([[[0.5, -0.5]]]))


def test_next_token_logprobs_shifts():
    # logits[:, t] predicts labels[:, t+1]. Position 0: [ln 3, 0] -> p(0) = 3/4;
    # position 1: [0, 0] -> p(1) = 1/2; the last position predicts nothing.
    logits = torch.tensor([[[LN3, 0.0], [0.0, 0.0], [5.0, -5.0]]])
    labels = torch.tensor([[-100, 0, 1]])
    logps, mask = next_token_logprobs(logits, labels)
    assert_close(logps, torch.tensor([[math.log(0.75), math.log(0.5)]]))
    assert mask.tolist() == [[True, True]]


def test_sequence_logprob_sum_and_mean():
    t = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, 7.0, float("nan")]])
    m = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # row 0: sum -6, mean -2; row 1: only -4 counts.
    assert_close(sequence_logprob(t, m, "sum"), torch.tensor([-6.0, -4.0]))
    assert_close(sequence_logprob(t, m, "mean"), torch.tensor([-2.0, -4.0]))
    with pytest.raises(UnknownNameError, match="known: mean, sum"):
        sequence_logprob(t, m, "avg")


def test_masked_mean_and_var():
    v = torch.tensor([1.0, 3.0, float("nan")])
    m = torch.tensor([True, True, False])
    assert_close(masked_mean(v, m), torch.tensor(2.0))
    # deviations -1, +1: unbiased (n-1 = 1) variance 2, biased (n = 2) variance 1.
    assert_close(masked_var(v, m), torch.tensor(2.0))
    assert_close(masked_var(v, m, unbiased=False), torch.tensor(1.0))
    # No valid entry: 0, not NaN.
    assert_close(masked_mean(v, torch.zeros(3, dtype=torch.bool)), torch.tensor(0.0))
    # Per-row mean along a dim.
    assert_close(masked_mean(torch.tensor([[1.0, 5.0], [2.0, 4.0]]), torch.tensor([[1, 0], [1, 1]]), dim=-1),
                 torch.tensor([1.0, 3.0]))


def test_masked_whiten():
    v = torch.tensor([1.0, 3.0, 100.0])
    m = torch.tensor([1, 1, 0])
    # mean 2, unbiased var 2 -> (v - 2) / sqrt(2) = -/+ 0.7071; masked entry -> 0.
    s = 1 / math.sqrt(2 + 1e-8)
    assert_close(masked_whiten(v, m), torch.tensor([-s, s, 0.0]))
    assert_close(masked_whiten(v, m, shift_mean=False), torch.tensor([2 - s, 2 + s, 0.0]))
    # biased var 1 -> (v - 2) / 1.
    assert_close(masked_whiten(v, m, unbiased=False), torch.tensor([-1.0, 1.0, 0.0]), atol=1e-6, rtol=0)


def test_entropy_from_logits():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0],            # uniform over 4: ln 4
                            [0.0, 0.0, float("-inf"), float("-inf")],  # uniform over 2: ln 2
                            [30.0, 0.0, 0.0, 0.0]]])          # nearly one-hot: ~0
    out = entropy_from_logits(logits)
    assert_close(out, torch.tensor([[math.log(4), LN2, 0.0]]), atol=1e-6, rtol=1e-5)


def test_last_valid_index_and_place_on_last_token():
    m = torch.tensor([[1, 1, 0], [0, 1, 1], [0, 0, 0], [1, 0, 1]])
    assert last_valid_index(m).tolist() == [1, 2, -1, 2]
    out = place_on_last_token(torch.tensor([1.0, 2.0, 3.0, 4.0]), m)
    assert out.tolist() == [[0, 1, 0], [0, 0, 2], [0, 0, 0], [0, 0, 4]]  # empty row gets nothing
