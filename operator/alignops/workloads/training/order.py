"""The data order of a trained stage: a pure function of (seed, epoch), so resuming at optimiser
step k needs only k. Step k reads examples ``order[k*B*A : (k+1)*B*A]`` of the epoch-wise
permutations (B the micro-batch, A the gradient accumulation steps); streamed data is read in the
stream's own order (``StreamOrder``)."""

from __future__ import annotations

import torch

from alignops.seeds import EPOCH, derive_seed


def epoch_permutation(size: int, seed: int, epoch: int) -> list[int]:
    """The seeded permutation of ``range(size)`` that epoch ``epoch`` reads."""
    return torch.randperm(size, generator=torch.Generator().manual_seed(derive_seed(seed, (EPOCH, epoch)))).tolist()


class DataOrder:
    """Which examples each micro-batch of each optimiser step reads."""

    def __init__(self, size: int, batch_size: int, accumulation: int, seed: int):
        self.size, self.batch_size, self.accumulation, self.seed = size, batch_size, accumulation, seed
        self._epoch_cache: dict[int, list[int]] = {}

    def _epoch(self, epoch: int) -> list[int]:
        if epoch not in self._epoch_cache:
            self._epoch_cache = {epoch: epoch_permutation(self.size, self.seed, epoch)}
        return self._epoch_cache[epoch]

    def micro_batch(self, step: int, micro: int) -> list[int]:
        start = (step * self.accumulation + micro) * self.batch_size
        return [self._epoch((start + i) // self.size)[(start + i) % self.size] for i in range(self.batch_size)]

    def epoch_order(self, epoch: int) -> list[int]:
        """The example indices in the order ``epoch`` reads them (a copy)."""
        return list(self._epoch(epoch))

    def steps_per_epoch(self) -> int:
        return max(1, self.size // (self.batch_size * self.accumulation))


class StreamOrder:
    """Streamed data (``streaming: true``): positions in the order the stream gives them (it
    shuffles itself), step k's micro-batch m reading ``[(k*A + m)*B, (k*A + m + 1)*B)``. A stream
    has no length, so the stage trains for ``maxSteps``."""

    def __init__(self, batch_size: int, accumulation: int):
        self.batch_size, self.accumulation = batch_size, accumulation

    def micro_batch(self, step: int, micro: int) -> list[int]:
        start = (step * self.accumulation + micro) * self.batch_size
        return list(range(start, start + self.batch_size))

    def steps_per_epoch(self) -> int:
        raise ValueError("streamed data has no length: set hyperparameters.maxSteps")
