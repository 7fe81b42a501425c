"""The frozen reference model of preference optimisation, and its log-probabilities of the
training sequences, computed once and cached.

The cache fills in the order training first reads the data: chunk c holds the items at positions
``[c*C, (c+1)*C)`` of the first epoch's order, with C the items of one optimiser step. So the first
epoch scores exactly the batches it trains on (nothing for data a short run never reads), later
epochs only read the cache, and a value never depends on when it was asked for: a resumed run
recomputes bit-identical reference log-probs (exact resume). On several processes each scores its
share of a chunk and all of them get the whole chunk: each sequence is scored once per run.
"""

from __future__ import annotations

import copy

import torch

from alignops.workloads.context import RunContext
from alignops.workloads.distributed import SINGLE, World
from alignops.workloads.models.adapter import adapter_reference
from alignops.workloads.models.policy import Starting, initial_model
from alignops.workloads.data.batching import to_device
from alignops.workloads.models.scoring import SequenceScores, sequence_logps_batched
from alignops.workloads.data.sft import SftExample


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    model.requires_grad_(False)
    return model.eval()


def frozen_reference(ctx: RunContext, start: Starting, untrained: bool, place=freeze):
    """The frozen reference: ``inputs.reference`` if given, else the policy's starting model (never
    the stage's own resumed checkpoint). Where no reference is named, a policy training an adapter
    is its own reference with the adapter off, and an untrained fresh policy (``untrained`` and not
    resumed) is copied: no second load. A loaded reference is placed by ``place`` (an engine's
    ``frozen``: sharded under ZeRO-3)."""
    inputs = ctx.config.inputs
    if inputs.reference is None:
        shared = adapter_reference(start.model)
        if shared is not None:
            return shared
        sharded = any(hasattr(p, "ds_id") for p in start.model.parameters())  # ZeRO-3's: a copy would hold empty shards
        if untrained and start.resume is None and not sharded:
            return place(copy.deepcopy(start.model))
    return place(initial_model(ctx, inputs.reference or inputs.policy).model)


class ReferenceLogps:
    """Summed reference log-probs of each item's sequences (a pair: chosen and rejected; a KTO
    example: its completion). ``get(items)`` -> (len(items), sequences per item)."""

    def __init__(self, model: torch.nn.Module, items: list[list[SftExample]], pad_token_id: int, world: World = SINGLE):
        self.model, self.items, self.pad_token_id, self.world = freeze(model), items, pad_token_id, world
        width = len(items[0]) if items else 0
        device = next(model.parameters()).device
        self.values = torch.zeros(len(items), width, dtype=torch.float32, device=device)
        self.filled: set[int] = set()
        self.follow(list(range(len(items))), chunk=64)
        self.computed_sequences = 0  # how much work the cache did (reported; tests check it)

    def follow(self, first_epoch_order: list[int], chunk: int) -> "ReferenceLogps":
        """Fill in the first epoch's order, ``chunk`` items at a time (the items of one step)."""
        self.order, self.chunk = first_epoch_order, max(1, chunk)
        self.position = {item: pos for pos, item in enumerate(first_epoch_order)}
        self.filled = set()
        return self

    def get(self, items: list[int]) -> torch.Tensor:
        for c in sorted({self.position[i] // self.chunk for i in items} - self.filled):
            members = self.order[c * self.chunk : (c + 1) * self.chunk]
            self.values[to_device(torch.as_tensor(members), self.values.device)] = self._score_members(members)
            self.filled.add(c)
            self.computed_sequences += sum(len(self.items[i]) for i in members)
        return self.values[to_device(torch.as_tensor(items, dtype=torch.long), self.values.device)]

    def _score_members(self, members: list[int]) -> torch.Tensor:
        """(len(members), width) reference log-probs, each member scored by one process."""
        def score(positions: list[int]) -> torch.Tensor:
            sequences = [s for p in positions for s in self.items[members[p]]]
            scores = sequence_logps_batched(self.model, sequences, self.pad_token_id).logp_sum.float()
            return [scores.view(len(positions), -1)]

        return self.world.shared_rows(len(members), score)[0]

    def score(self, examples: list[SftExample]) -> SequenceScores:
        """Uncached reference log-probs of arbitrary sequences (KTO's mismatched pairs)."""
        return sequence_logps_batched(self.model, examples, self.pad_token_id)
