"""Sequence packing for SFT (``hyperparameters.packing``): examples placed whole into rows of at
most maxLength tokens, best-fit decreasing (as TRL's ``bfd``), so a row is nearly full and a batch
computes few padding tokens.

Examples in a row must not attend to each other. Each example's position ids restart at 0 and the
model gets no 2D attention mask: transformers (>= 4.53's ``masking_utils``) then reads the
restarts as sequence boundaries, building a block-diagonal causal mask for sdpa and eager attention
and passing the boundaries to flash-attention's varlen kernel, which computes no cross-example
attention at all. ``use_cache=False`` is needed: with a cache the boundaries are not looked for.
Where transformers cannot (older versions), ``block_causal_mask`` gives the same mask explicitly.
A row's first label in each example is masked (``sft.assemble``), so no example is taught to
predict the next one's first token.
"""

from __future__ import annotations

from bisect import bisect_left, insort

import torch

from alignops.algos import IGNORE_INDEX
from alignops.workloads.data.sft import SftExample


def pack_bfd(lengths: list[int], capacity: int) -> list[list[int]]:
    """Rows of example indices, each row's lengths summing to at most ``capacity``: longest
    first, each into the row whose space left fits it most tightly (a new row if none does)."""
    rows: list[list[int]] = []
    space: list[tuple[int, int]] = []  # (space left, row), sorted
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        length = min(lengths[index], capacity)
        at = bisect_left(space, (length, -1))
        if at == len(space):
            rows.append([index])
            insort(space, (capacity - length, len(rows) - 1))
            continue
        left, row = space.pop(at)
        rows[row].append(index)
        insort(space, (left - length, row))
    return rows


def packs_by_position_ids() -> bool:
    """Whether this transformers finds packed sequences from position ids (>= 4.53)."""
    try:
        from transformers.masking_utils import find_packed_sequence_indices  # noqa: F401
    except ImportError:
        return False
    return True


def packed_batch(rows: list[list[SftExample]], pad_token_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, labels, position_ids), each (R, L): the examples of each row one after another,
    positions restarting per example; the right padding counts as one more sequence of its own."""
    ids, labels, positions = [], [], []
    for row in rows:
        row_ids, row_labels, row_positions = [], [], []
        for example in row:
            row_ids += example.input_ids
            row_labels += [IGNORE_INDEX] + example.labels[1:]
            row_positions += range(len(example.input_ids))
        ids.append(row_ids)
        labels.append(row_labels)
        positions.append(row_positions)
    width = max(len(r) for r in ids)
    for row_ids, row_labels, row_positions in zip(ids, labels, positions):
        pad = width - len(row_ids)
        row_ids += [pad_token_id] * pad
        row_labels += [IGNORE_INDEX] * pad
        row_positions += range(pad)
    as_tensor = lambda rows_: torch.tensor(rows_, device=device)  # noqa: E731
    return as_tensor(ids), as_tensor(labels), as_tensor(positions)


def block_causal_mask(position_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(R, 1, L, L) additive mask: 0 where query t may attend key s (same example, s <= t), the
    dtype's minimum elsewhere. Sequences begin wherever the position id does not go up by one."""
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    sequence = starts.long().cumsum(-1)  # (R, L): which example each token belongs to
    length = position_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=position_ids.device).tril()
    allowed = (sequence.unsqueeze(-1) == sequence.unsqueeze(-2)) & causal
    mask = torch.zeros(allowed.shape, dtype=dtype, device=position_ids.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min).unsqueeze(1)


def packed_logits(model, input_ids: torch.Tensor, position_ids: torch.Tensor, explicit_mask: bool | None = None) -> torch.Tensor:
    """The model's logits on packed rows, no attention across examples."""
    if explicit_mask is None:
        explicit_mask = not packs_by_position_ids()
    if explicit_mask:
        mask = block_causal_mask(position_ids, next(model.parameters()).dtype)
        return model(input_ids=input_ids, position_ids=position_ids, attention_mask=mask, use_cache=False).logits
    return model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits
