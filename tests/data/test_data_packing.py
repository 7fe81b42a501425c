"""Packing: best-fit decreasing rows, and a packed batch gives every example the same token
log-probs (so the same loss) as the unpacked batch, in fp32, with sdpa and eager attention, through
transformers' position-id boundaries and through the explicit block-diagonal mask; without the
restarts the examples would see each other, which the comparison catches."""

from __future__ import annotations

import pytest
import torch

from alignops.algos import next_token_logprobs
from alignops.algos.sft import masked_lm_loss
from alignops.api.common import Architecture
from alignops.workloads.data.batching import sft_batch
from alignops.workloads.data.packing import block_causal_mask, pack_bfd, packed_batch, packed_logits
from alignops.workloads.data.sft import tokenize_sft
from alignops.workloads.models.build import build_model

RECORDS = [{"prompt": "12+7=", "completion": "19"}, {"prompt": "a much longer prompt here: 3+4=", "completion": "7"},
           {"prompt": "1+1=", "completion": "2"}, {"prompt": "what is 40 + 2? ", "completion": "42, of course"},
           {"prompt": "9+9=", "completion": "18"}, {"prompt": "", "completion": "no prompt at all"}]


def test_best_fit_decreasing_fills_rows():
    # longest first: 8 opens row 0 (2 left), 6 row 1 (4 left), 5 row 2 (5 left); 4 fits row 1
    # exactly, 3 goes to row 2 (tightest fit: 5 left), 2 to row 0 (2 left, tighter than row 2's 2
    # only by the row order)
    assert pack_bfd([5, 3, 8, 2, 6, 4], 10) == [[2, 3], [4, 5], [0, 1]]
    assert pack_bfd([], 10) == []
    assert sorted(i for row in pack_bfd([7] * 5 + [3] * 5, 10) for i in row) == list(range(10))


def _model(attention: str):
    from alignops.workloads.models.build import build_tokenizer

    tokenizer = build_tokenizer()
    model = build_model(Architecture.model_validate({"hiddenSize": 32, "layers": 2, "heads": 2, "maxPositions": 128, "seed": 3}), tokenizer)
    model.set_attn_implementation(attention)
    return model.eval(), tokenizer


def _per_example(logps: torch.Tensor, mask: torch.Tensor, spans: list[tuple[int, int, int]]) -> list[torch.Tensor]:
    """Each example's token log-probs from (row, start, length) spans of a (R, L-1) tensor."""
    return [logps[r, start : start + length - 1][mask[r, start : start + length - 1]] for r, start, length in spans]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("explicit_mask", [False, True], ids=["position-ids", "explicit-mask"])
def test_a_packed_batch_gives_each_example_its_unpacked_loss(attention, explicit_mask):
    model, tokenizer = _model(attention)
    examples = [tokenize_sft(r, tokenizer, max_length=40) for r in RECORDS]
    with torch.no_grad():
        input_ids, labels, attention_mask = sft_batch(examples, tokenizer.pad_token_id, "cpu")
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        unpacked_logps, unpacked_mask = next_token_logprobs(logits, labels)
        expected = [unpacked_logps[i][unpacked_mask[i]] for i in range(len(examples))]

        rows = pack_bfd([len(e.input_ids) for e in examples], 64)
        assert len(rows) < len(examples)  # something really shares a row
        packed = [[examples[i] for i in row] for row in rows]
        ids, packed_labels, positions = packed_batch(packed, tokenizer.pad_token_id, "cpu")
        packed_logps, packed_mask = next_token_logprobs(packed_logits(model, ids, positions, explicit_mask), packed_labels)
        spans = {}
        for r, row in enumerate(rows):
            start = 0
            for i in row:
                spans[i] = (r, start, len(examples[i].input_ids))
                start += len(examples[i].input_ids)
        got = _per_example(packed_logps, packed_mask, [spans[i] for i in range(len(examples))])
    for i, (a, b) in enumerate(zip(expected, got)):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5, rtol=0), (i, (a - b).abs().max())
    # the whole batch's token-mean loss is the same packed and unpacked
    tokens = int(unpacked_mask.sum())
    assert int(packed_mask.sum()) == tokens
    assert torch.allclose(-packed_logps[packed_mask].sum() / tokens, -unpacked_logps[unpacked_mask].sum() / tokens, atol=1e-6)

    # the same rows without restarting positions (and no mask) let examples attend to each other
    with torch.no_grad():
        leaky = model(input_ids=ids, use_cache=False).logits
    leaky_logps, _ = next_token_logprobs(leaky, packed_labels)
    leaked = _per_example(leaky_logps, packed_mask, [spans[i] for i in range(len(examples))])
    assert max((a - b).abs().max() for a, b in zip(expected, leaked)) > 1e-3


def test_block_causal_mask_by_hand():
    # one row: an example of 2 tokens, one of 3 (positions 0 1 | 0 1 2)
    mask = block_causal_mask(torch.tensor([[0, 1, 0, 1, 2]]), torch.float32)[0, 0] == 0
    allowed = torch.tensor([[1, 0, 0, 0, 0],
                            [1, 1, 0, 0, 0],
                            [0, 0, 1, 0, 0],
                            [0, 0, 1, 1, 0],
                            [0, 0, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, allowed)


def test_per_token_weights_are_per_example_weights_over_each_span():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, 1, 2, -100, 3], [-100, 4, 5, 6, -100]])
    per_example = masked_lm_loss(logits, labels, torch.tensor([0.5, 2.0]), num_tokens=6)
    per_token = masked_lm_loss(logits, labels, torch.tensor([[0.5] * 5, [2.0] * 5]), num_tokens=6)
    assert torch.allclose(per_example, per_token)
