import math

import torch
import torch.nn.functional as F
from torch.testing import assert_close

from alignops.algos import masked_lm_loss

LN3 = math.log(3)


def _example():
    # Row 0: tokens 0-1 are prompt (-100). logits[:, t] predicts labels[:, t+1]:
    #   t=0 -> label[1] = -100 (prompt): no loss
    #   t=1 -> label[2] = 1 with logits [0, 0]:    p = 1/2, nll = ln 2
    #   t=2 -> label[3] = 0 with logits [ln 3, 0]: p = 3/4, nll = ln(4/3)
    #   t=3 predicts nothing.
    # Row 1: t=0 -> label[1] = 0 with logits [0, ln 3]: p = 1/4, nll = ln 4; rest masked.
    logits = torch.tensor([
        [[9.0, -9.0], [0.0, 0.0], [LN3, 0.0], [7.0, 1.0]],
        [[0.0, LN3], [3.0, 3.0], [1.0, 2.0], [0.5, 0.0]],
    ])
    labels = torch.tensor([[-100, -100, 1, 0], [-100, 0, -100, -100]])
    return logits, labels


def test_hand_computed_value():
    logits, labels = _example()
    # (ln 2 + ln 4/3 + ln 4) / 3 tokens = ln(32/3) / 3
    assert_close(masked_lm_loss(logits, labels), torch.tensor(math.log(32 / 3) / 3))


def test_masked_positions_do_not_change_the_loss():
    logits, labels = _example()
    before = masked_lm_loss(logits, labels)
    changed = logits.clone()
    changed[0, 0] = torch.tensor([-50.0, 50.0])  # predicts a prompt token
    changed[0, 3] = torch.tensor([100.0, 3.0])   # predicts past the end
    changed[1, 1:] = torch.randn(3, 2) * 10       # predicts masked tokens
    assert_close(masked_lm_loss(changed, labels), before)


def test_matches_shifted_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 7)
    labels = torch.randint(0, 7, (3, 6))
    labels[:, :2] = -100
    labels[1, 4:] = -100
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert_close(masked_lm_loss(logits, labels), ref)


def test_c_rlft_weights():
    logits, labels = _example()
    # weights [1, 0.5]: (ln 2 + ln 4/3 + 0.5 ln 4) / 3 = (ln 8/3 + ln 2) / 3 = ln(16/3) / 3
    w = torch.tensor([1.0, 0.5])
    assert_close(masked_lm_loss(logits, labels, w), torch.tensor(math.log(16 / 3) / 3))
    # Weights are not renormalised: all-ones equals the plain loss, all-0.1 is 10x smaller.
    plain = masked_lm_loss(logits, labels)
    assert_close(masked_lm_loss(logits, labels, torch.ones(2)), plain)
    assert_close(masked_lm_loss(logits, labels, torch.full((2,), 0.1)), 0.1 * plain)


def test_global_token_normaliser_makes_shards_add_up():
    logits, labels = _example()
    whole = masked_lm_loss(logits, labels)
    shards = masked_lm_loss(logits[:1], labels[:1], num_tokens=3) + masked_lm_loss(logits[1:], labels[1:], num_tokens=3)
    assert_close(shards, whole)


def test_no_labelled_token_gives_zero_not_nan():
    loss = masked_lm_loss(torch.randn(1, 3, 4), torch.full((1, 3), -100))
    assert loss.item() == 0.0
