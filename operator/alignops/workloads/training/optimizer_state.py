"""AdamW state by parameter name, in safetensors: the form a checkpoint keeps it in whatever engine
wrote it, so a run resumes on any number of processes and any ZeRO stage (``exp_avg`` and
``exp_avg_sq`` of every parameter, whole, and the step count).

Large states are written in shards of about ``SHARD_BYTES`` as they are gathered, so the writer
holds at most one shard in memory; ``OptimizerStateReader`` reads one tensor at a time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file

STATE_KEYS = ("exp_avg", "exp_avg_sq")
INDEX = "optimizer.index.json"
FORMAT = "alignops-adamw-v1"
SHARD_BYTES = 2 * 1024**3


def _shard_name(number: int) -> str:
    return f"optimizer-{number:05d}.safetensors"


def write_optimizer_state(directory: Path, states: Iterable[tuple[str, dict[str, torch.Tensor]]], step: int,
                          shard_bytes: int = SHARD_BYTES) -> None:
    """Write ``(parameter name, {exp_avg, exp_avg_sq})`` pairs (whole tensors) and the step count."""
    directory = Path(directory)
    shard: dict[str, torch.Tensor] = {}
    size, files, where = 0, [], {}

    def flush() -> None:
        nonlocal shard, size
        if shard:
            name = _shard_name(len(files) + 1)
            save_file(shard, str(directory / name), metadata={"format": FORMAT})
            files.append(name)
            where.update({key: name for key in shard})
        shard, size = {}, 0

    for name, state in states:
        for key in STATE_KEYS:
            tensor = state[key].detach().to("cpu", torch.float32).contiguous()
            shard[f"{name}.{key}"] = tensor
            size += tensor.numel() * 4
        if size >= shard_bytes:
            flush()
    flush()
    (directory / INDEX).write_text(json.dumps({"format": FORMAT, "step": step, "files": files, "weight_map": where}))


class OptimizerStateReader:
    """The state a checkpoint holds, read a parameter at a time."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        index = json.loads((self.directory / INDEX).read_text())
        if index.get("format") != FORMAT:
            raise ValueError(f"{self.directory / INDEX}: unknown optimizer state format {index.get('format')!r}")
        self.step: int = index["step"]
        self.weight_map: dict[str, str] = index["weight_map"]

    @staticmethod
    def present(directory: Path) -> bool:
        return (Path(directory) / INDEX).exists()

    def names(self) -> set[str]:
        return {key.rsplit(".", 1)[0] for key in self.weight_map}

    def state(self, name: str, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        out = {}
        for key in STATE_KEYS:
            file = self.weight_map[f"{name}.{key}"]
            with safe_open(str(self.directory / file), framework="pt", device=str(device)) as handle:
                out[key] = handle.get_tensor(f"{name}.{key}")
        return out


def adam_states(optimizer: torch.optim.Optimizer, named: Iterable[tuple[str, torch.nn.Parameter]]) -> Iterator[tuple[str, dict]]:
    """A plain torch Adam/AdamW's state of each named parameter (zeros before its first step)."""
    for name, param in named:
        state = optimizer.state.get(param) or {}
        yield name, {key: state.get(key, torch.zeros_like(param)) for key in STATE_KEYS}


def adam_step(optimizer: torch.optim.Optimizer) -> int:
    for state in optimizer.state.values():
        if "step" in state:
            return int(state["step"])
    return 0


def load_adam_states(optimizer: torch.optim.Optimizer, named: Iterable[tuple[str, torch.nn.Parameter]],
                     reader: OptimizerStateReader) -> None:
    """Fill a plain torch Adam/AdamW from ``reader`` (its state is created the way torch's lazy
    initialisation creates it)."""
    for name, param in named:
        saved = reader.state(name, param.device)
        optimizer.state[param] = {"step": torch.tensor(float(reader.step), dtype=torch.float32),
                                  **{key: saved[key].to(param.dtype) for key in STATE_KEYS}}
