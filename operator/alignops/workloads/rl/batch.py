"""A round's rollouts as trainer tensors, and the trainer's log-probs, entropies and values of them.

Sequences are ``prompt + response`` right-padded to one width L (positions then count from 0 for
every row, as in the engine's left-padded generation). Everything per token is (B, L-1) and aligned
with next-token prediction: column t holds the log-prob of token t+1 under the logits of position t,
and ``response_mask`` marks the columns whose target is a response token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignops.algos import IGNORE_INDEX
from alignops.workloads.models.scoring import token_values
from alignops.workloads.models.token_logps import causal_token_logprobs


@dataclass
class TokenBatch:
    """input_ids, attention_mask (B, L); response_mask (B, L-1) bool; lengths (B,) response tokens."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, rows: torch.Tensor | list[int]) -> "TokenBatch":
        """Rows of the batch, trimmed to the widest of them (padding columns cost compute)."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.input_ids.device)
        width = int(self.attention_mask[rows].sum(-1).max())
        return TokenBatch(self.input_ids[rows, :width], self.attention_mask[rows, :width],
                          self.response_mask[rows, : width - 1], self.labels[rows, :width])


def pack(prompts: list[list[int]], responses: list[list[int]], pad_token_id: int, device) -> TokenBatch:
    """Right-padded ``prompt + response`` sequences with response-only labels."""
    sequences = [p + r for p, r in zip(prompts, responses)]
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
    for row, (p, r) in enumerate(zip(prompts, responses)):
        input_ids[row, : len(p) + len(r)] = torch.tensor(p + r)
        attention[row, : len(p) + len(r)] = 1
        labels[row, len(p) : len(p) + len(r)] = torch.tensor(r, dtype=torch.long)
    return TokenBatch(input_ids.to(device), attention.to(device), (labels[:, 1:] != IGNORE_INDEX).to(device), labels.to(device))


def response_logprobs(model, batch: TokenBatch, temperature: float, with_entropy: bool = False):
    """(logp (B, L-1) float32, entropy (B, L-1) or None) of the response tokens under ``model``'s
    sampling distribution ``softmax(z / T)``; 0 outside the response (the entropy too). Differentiable
    (the entropy is not); the (B, L, V) logits are never formed whole (``causal_token_logprobs``)."""
    return causal_token_logprobs(model, batch.input_ids, batch.attention_mask, batch.labels, temperature, with_entropy)


@torch.no_grad()
def chunked(fn, batch: TokenBatch, chunk: int) -> list[torch.Tensor | None]:
    """``fn(sub_batch)`` over row chunks of ``chunk``, outputs concatenated along rows and re-padded
    to the batch's width (each chunk is trimmed to its own widest row)."""
    pieces: list = []
    for start in range(0, len(batch), chunk):
        rows = list(range(start, min(start + chunk, len(batch))))
        pieces.append(fn(batch.select(rows)))
    width = batch.response_mask.shape[1]
    out = []
    for parts in zip(*[p if isinstance(p, tuple) else (p,) for p in pieces]):
        if parts[0] is None:
            out.append(None)
            continue
        out.append(torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in parts]))
    return out


def values_of(critic, batch: TokenBatch) -> torch.Tensor:
    """(B, L-1) critic values, 0 outside the response."""
    values = token_values(critic, batch.input_ids, batch.attention_mask)
    return torch.where(batch.response_mask, values, torch.zeros_like(values))


@torch.no_grad()
def sharded(fn, batch: TokenBatch, chunk: int, world) -> list[torch.Tensor | None]:
    """``chunked`` with the rows shared out over the run's processes (``World.shared_rows``) and
    gathered back into row order on every process."""
    width = batch.response_mask.shape[1]

    def compute(rows: list[int]) -> list[torch.Tensor | None]:
        parts = chunked(fn, batch.select(rows), chunk)
        return [None if p is None else torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in parts]

    return world.shared_rows(len(batch), compute)
