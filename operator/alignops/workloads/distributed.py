"""The processes of a stage run: which one this is (``World``) and the few collectives the stages
need. One process (``alignops run`` on a laptop, a 1-GPU pod) is a world of one, where every
collective is the identity and nothing touches ``torch.distributed``; the workers a launcher starts
(``alignops.workloads.launch``) join one process group: NCCL on GPUs, gloo on the CPU.

Invariants kept here: only the main process (global rank 0) commits, logs metrics and writes the
result; every process stops at the same step (``World.any``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Sequence, TypeVar

import torch

T = TypeVar("T")

# a collective that waits longer than this has lost a peer (a crashed or killed rank): fail the run
COLLECTIVE_TIMEOUT = timedelta(minutes=int(os.environ.get("ALIGNOPS_COLLECTIVE_TIMEOUT_MINUTES", "30")))


@dataclass(frozen=True)
class World:
    """This process's place among the run's processes."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1
    local_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def node(self) -> int:
        return self.rank // self.local_size

    # -- collectives (identities in a world of one) ------------------------------------------------
    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over every process (in place, on whatever device it lives)."""
        if self.distributed:
            moved = values.to(self._device())
            torch.distributed.all_reduce(moved, op=torch.distributed.ReduceOp.SUM)
            if moved is not values:
                values.copy_(moved)
        return values

    def sum_floats(self, values: dict[str, float]) -> dict[str, float]:
        """Each number summed over every process (the same keys on every process)."""
        if not self.distributed or not values:
            return values
        keys = sorted(values)
        total = self.sum(torch.tensor([float(values[k]) for k in keys], dtype=torch.float64))
        return dict(zip(keys, total.tolist()))

    def max_float(self, value: float) -> float:
        """The largest ``value`` over every process."""
        if not self.distributed:
            return value
        values = torch.tensor([float(value)], dtype=torch.float64).to(self._device())
        torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.MAX)
        return float(values.item())

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any process: how every rank agrees to stop at the same step."""
        if not self.distributed:
            return flag
        return bool(self.sum(torch.tensor([int(flag)])).item())

    def gather_floats(self, value: float) -> list[float]:
        """Every process's ``value``, in rank order (one small all-gather)."""
        if not self.distributed:
            return [float(value)]
        mine = torch.tensor([float(value)], dtype=torch.float64, device=self._device())
        parts = [torch.empty_like(mine) for _ in range(self.size)]
        torch.distributed.all_gather(parts, mine)
        return [float(part.item()) for part in parts]

    def all_gather_object(self, value: T) -> list[T]:
        if not self.distributed:
            return [value]
        out: list[Any] = [None] * self.size
        torch.distributed.all_gather_object(out, value)
        return out

    def broadcast_object(self, value: T, src: int = 0) -> T:
        if not self.distributed:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=src)
        return box[0]

    def gather_rows(self, local: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """The concatenation, in rank order, of every process's ``local`` rows (process r holds
        ``counts[r]`` of them; the other dimensions agree)."""
        if not self.distributed:
            return local
        width = max(counts)
        padded = torch.zeros((width, *local.shape[1:]), dtype=local.dtype, device=local.device)
        padded[: len(local)] = local
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        torch.distributed.all_gather(parts, padded)
        return torch.cat([part[:n] for part, n in zip(parts, counts)])

    def shared_rows(self, count: int, compute: Callable[[list[int]], Sequence[torch.Tensor | None]]) -> list[torch.Tensor | None]:
        """Rows ``0..count-1`` of one or more tensors, computed once over the whole run: each process
        calls ``compute(positions)`` for every ``size``-th position from its rank (padded with a
        repeat of position 0 so every process makes the same calls, which ZeRO-3's sharded models
        need), and every process gets all rows back in order. ``compute`` returns tensors (or None)
        with one row per position."""
        if not self.distributed:
            return list(compute(list(range(count))))
        per = -(-count // self.size)
        mine = list(range(self.rank, count, self.size))
        mine += [0] * (per - len(mine))
        out: list[torch.Tensor | None] = []
        for part in compute(mine):
            if part is None:
                out.append(None)
                continue
            gathered = self.gather_rows(part.contiguous(), [per] * self.size)
            rows = torch.empty((count, *gathered.shape[1:]), dtype=gathered.dtype, device=gathered.device)
            for rank in range(self.size):
                owned = list(range(rank, count, self.size))
                rows[owned] = gathered[rank * per : rank * per + len(owned)]
            out.append(rows)
        return out

    def on_node_leader(self, fetch: Callable[[], T]) -> T:
        """``fetch()`` run once per node (by its first process) while the others wait, then its
        value on every process of the node: a model is downloaded and verified once per pod."""
        # a leader whose fetch raises exits with its error, and the launcher stops the waiting rest
        mine = fetch() if self.local_rank == 0 else None
        if not self.distributed:
            return mine
        values = self.all_gather_object(mine)
        return values[self.node * self.local_size]

    def _device(self) -> torch.device:
        if torch.distributed.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def share(self, items: list[T]) -> list[T]:
        """This process's share of ``items``: every ``size``-th item from its rank (equal shares when
        ``len(items)`` is a multiple of the world size)."""
        return items[self.rank :: self.size]


SINGLE = World()


def worker_environment() -> bool:
    """Whether this process is one of a launched group's workers (torch's launchers set these)."""
    return "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_world() -> World:
    """Join the run's process group when this process is a launched worker; a world of one otherwise."""
    if not worker_environment():
        return SINGLE
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank, local_size = int(os.environ["LOCAL_RANK"]), int(os.environ.get("LOCAL_WORLD_SIZE", size))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        backend = "nccl"
    else:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed picks its accelerator on import
        backend = "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    return World(rank=rank, local_rank=local_rank, size=size, local_size=local_size)
