"""The trainer's weights under their checkpoint names, for engines that load checkpoints (vLLM).

vLLM's ``load_weights`` takes what a Hugging Face checkpoint holds, but transformers 5 keeps some
weights in memory in another layout. Its MoE models fuse the experts (``conversion_mapping.py``):
Qwen3-MoE holds ``model.layers.N.mlp.experts.gate_up_proj`` (E, 2I, H) and ``.down_proj`` (E, H, I)
where the checkpoint has ``model.layers.N.mlp.experts.<e>.{gate,up,down}_proj.weight``; Mixtral's
checkpoint also says ``block_sparse_moe`` for ``mlp`` and ``w1``/``w3``/``w2`` for gate/up/down.
``save_pretrained`` undoes this with ``transformers.core_model_loading.revert_weight_conversion``
(the model's recorded conversions, else its class's registered ones); the same function turns the
live parameters back into checkpoint names here, so a sync sends exactly what a checkpoint of the
same model would hold (tests check this against ``save_pretrained``'s output). transformers 4 has no
such conversions: names pass unchanged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from itertools import groupby
from pathlib import Path

import torch

from alignops.workloads.context import ConfigError

try:  # transformers >= 5 (also what vLLM 0.33 pins: >=5.16.1,<5.21)
    from transformers.core_model_loading import revert_weight_conversion
except ImportError:  # transformers 4: checkpoint layout == module layout
    def revert_weight_conversion(model, state_dict):
        return state_dict

_LAYER = re.compile(r"^(.*?\.layers\.\d+)\.")


def _layer_of(name: str) -> str:
    match = _LAYER.match(name)
    return match.group(1) if match else ""


@torch.no_grad()
def checkpoint_weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    """(checkpoint name, tensor) for every parameter of ``model``, tied ones once (as
    ``named_parameters`` yields them, and as ``save_pretrained`` writes them), one decoder layer at
    a time in module order: vLLM's layerwise reload processes a layer once all its tensors arrived,
    so this order holds one layer in its buffers at a time. Converting one layer per call also
    bounds what the conversion copies (splitting Qwen3-MoE's fused gate/up makes new tensors; the
    rest are views) to one layer at a time."""
    for _, group in groupby(model.named_parameters(), key=lambda item: _layer_of(item[0])):
        yield from revert_weight_conversion(model, {name: param.detach() for name, param in group}).items()


def checkpoint_names(directory: Path) -> set[str]:
    """The tensor names a Hugging Face checkpoint directory holds (safetensors index or headers)."""
    from safetensors import safe_open

    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        return set(json.loads(index.read_text())["weight_map"])
    names: set[str] = set()
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            names |= set(handle.keys())
    if not names:
        raise ConfigError(f"{directory}: no safetensors weights; the vllm engine loads safetensors checkpoints")
    return names


def check_names(sent: Iterable[str], directory: Path) -> None:
    """Every name a sync would send must be one the engine's checkpoint holds: vLLM rejects or skips
    a name it does not know, and that weight would stay stale in the engine."""
    known = checkpoint_names(directory)
    unknown = sorted(set(sent) - known)
    if unknown:
        raise ConfigError(
            f"weight sync to vllm: {len(unknown)} of the trainer's tensors have no name in the checkpoint the engine "
            f"loaded ({directory}), e.g. {unknown[:3]}; the engine would keep stale weights. The model's in-memory layout "
            "is not one transformers' revert_weight_conversion maps back: use engine: transformers for this model.")
