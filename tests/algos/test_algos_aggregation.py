import random

import pytest
import torch
from torch.testing import assert_close

from alignops.algos import AGGREGATION_MODES, UnknownNameError, aggregate_loss

LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 50.0, 60.0]])
MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])


def test_hand_computed_modes():
    # valid tokens: row 0 -> 1, 2, 3 (sum 6, mean 2); row 1 -> 4 (sum 4, mean 4)
    assert_close(aggregate_loss(LOSS, MASK, "token_mean"), torch.tensor(10 / 4))
    assert_close(aggregate_loss(LOSS, MASK, "seq_mean_token_mean"), torch.tensor((2 + 4) / 2))
    assert_close(aggregate_loss(LOSS, MASK, "seq_mean_token_sum"), torch.tensor((6 + 4) / 2))
    # Dr. GRPO: total / (num seqs * max_len) = 10 / (2 * 4)
    assert_close(aggregate_loss(LOSS, MASK, "seq_mean_token_sum_norm", max_len=4), torch.tensor(1.25))


def test_explicit_normalisers():
    assert_close(aggregate_loss(LOSS, MASK, "token_mean", num_global_tokens=8), torch.tensor(10 / 8))
    assert_close(aggregate_loss(LOSS, MASK, "seq_mean_token_sum", num_global_seqs=5), torch.tensor(10 / 5))


def test_unknown_mode_and_missing_max_len():
    with pytest.raises(UnknownNameError) as info:
        aggregate_loss(LOSS, MASK, "token-mean")
    assert str(info.value) == (
        "unknown loss aggregation mode 'token-mean'; known: "
        "seq_mean_token_mean, seq_mean_token_sum, seq_mean_token_sum_norm, token_mean"
    )
    with pytest.raises(ValueError, match="max_len"):
        aggregate_loss(LOSS, MASK, "seq_mean_token_sum_norm")


@pytest.mark.parametrize("mode", AGGREGATION_MODES.names())
def test_shards_with_global_normalisers_sum_to_whole_batch(mode):
    rng = random.Random(0)
    for trial in range(25):
        g = torch.Generator().manual_seed(trial)
        B, T = rng.randint(1, 9), rng.randint(1, 7)
        mask = torch.rand(B, T, generator=g) < 0.6  # some rows may be empty
        loss = torch.randn(B, T, generator=g, dtype=torch.float64)
        loss = torch.where(mask, loss, torch.full_like(loss, 1e6))  # garbage where masked
        kw = dict(max_len=T + 3)
        whole = aggregate_loss(loss, mask, mode, **kw)
        # Random split of a random permutation into 1..B shards.
        perm = torch.randperm(B, generator=g)
        cuts = sorted(rng.sample(range(1, B), rng.randint(0, B - 1))) if B > 1 else []
        shards = [perm[a:b] for a, b in zip([0] + cuts, cuts + [B])]
        total = sum(
            aggregate_loss(loss[idx], mask[idx], mode, num_global_tokens=int(mask.sum()),
                           num_global_seqs=B, **kw)
            for idx in shards
        )
        assert_close(total, whole, msg=f"mode {mode}, trial {trial}, shards {[s.tolist() for s in shards]}")
