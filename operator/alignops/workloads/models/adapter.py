"""LoRA adapters with ``peft``: wrapping a stage's model (``add_adapter``), the files a checkpoint
holds (``save_model_checkpoint``), loading an adapter checkpoint (``adapter_directory``,
``merge_into``, ``resume_adapter``) and the frozen reference as the same model with its adapter
switched off (``adapter_reference``).

A checkpoint of a stage with ``adapter`` holds the adapter (adapter_config.json,
adapter_model.safetensors) and ``adapter_base.json``: where the model it adapts is (a URI,
``hf://ORG/NAME@REV``, or the architecture it is built from). With ``merge: true`` the checkpoint's
root holds the merged full model (model.safetensors, loadable without peft) and the adapter moves to
``adapter/``. The next stage loads an adapter checkpoint as its base with the adapter merged in (and
trains a new adapter on top, or every weight); a resumed run loads the same base and the adapter
itself, trainable, so its optimizer state still matches.

For the engine (ZeRO): ``save_model_checkpoint(module, directory, state_dict)`` takes the gathered
full state dict (PeftModel keys) on the main rank; the merge is computed from it
(``merged_state_dict``), never from sharded parameters.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from alignops.api.common import HUB_REPO_PATTERN, HUB_SCHEME, LoraAdapter, hub_location, parse_hub_location
from alignops.workloads.context import ConfigError
from alignops.workloads.models.hf_dir import ADAPTER_CONFIG, CONFIG

ADAPTER_SUBDIR = "adapter"
ADAPTER_BASE = "adapter_base.json"
ADAPTER_ATTRIBUTE = "alignops_adapter"
PEFT_PREFIX = "base_model.model."
ADAPTER_NAME = "default"
# peft task types by the transformers head class: a new head (a reward model's score) is trained whole
TASKS = (("ForSequenceClassification", "SEQ_CLS"), ("ForTokenClassification", "TOKEN_CLS"))


@dataclass(frozen=True)
class AdapterBase:
    """The model an adapter applies to: ``location`` (a URI or ``hf://ORG/NAME@REV``), or None with
    the ``architecture`` (manifest form) it is built from."""

    location: str | None
    architecture: dict | None = None

    def save(self, directory: Path) -> None:
        (directory / ADAPTER_BASE).write_text(json.dumps({"location": self.location, "architecture": self.architecture}))


@dataclass(frozen=True)
class AdapterRecord:
    """What a model training an adapter carries (as ``model.alignops_adapter``) to be saved right."""

    spec: LoraAdapter
    base: AdapterBase


def task_type(model) -> str:
    name = type(model).__name__
    return next((task for suffix, task in TASKS if name.endswith(suffix)), "CAUSAL_LM")


def _name_base(config, base: AdapterBase) -> None:
    """adapter_config.json names the base: ORG/NAME and revision for a Hub model (peft loads it as
    it is), else the location."""
    location = base.location or "architecture"
    if location.startswith(HUB_SCHEME):
        config.base_model_name_or_path, config.revision = parse_hub_location(location)
    else:
        config.base_model_name_or_path = location


def add_adapter(model: torch.nn.Module, spec: LoraAdapter, base: AdapterBase) -> torch.nn.Module:
    """``model`` under a fresh LoRA adapter: only the adapter (and a new head) trains."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import Linear as LoraLinear, LoraLayer

    config = LoraConfig(r=spec.rank, lora_alpha=spec.lora_alpha, lora_dropout=spec.dropout,
                        target_modules=spec.modules, task_type=task_type(model))
    try:
        wrapped = get_peft_model(model, config)
    except ValueError as exc:
        raise ConfigError(f"adapter.targetModules {spec.target_modules!r}: {exc}") from None
    others = [name for name, module in wrapped.named_modules() if isinstance(module, LoraLayer) and not isinstance(module, LoraLinear)]
    if others:
        raise ConfigError(f"adapter.targetModules {spec.target_modules!r} names {others[0]}, which is not a linear layer; "
                          "LoRA here adapts linear layers only")
    _name_base(wrapped.peft_config[ADAPTER_NAME], base)
    setattr(wrapped, ADAPTER_ATTRIBUTE, AdapterRecord(spec, base))
    return wrapped


def adapter_directory(directory: Path) -> Path | None:
    """Where a checkpoint's adapter is: its root (adapter only) or ``adapter/`` (beside a merged
    model); None for a full model."""
    for candidate in (directory, directory / ADAPTER_SUBDIR):
        if (candidate / ADAPTER_CONFIG).is_file():
            return candidate
    return None


def adapter_only(directory: Path) -> bool:
    """A checkpoint holding an adapter and no full model: loading it needs its base."""
    return (directory / ADAPTER_CONFIG).is_file() and not (directory / CONFIG).is_file()


def adapter_base(directory: Path) -> AdapterBase:
    """The base of the adapter in ``directory``: our own record, else the Hub model its
    adapter_config.json names (an adapter trained elsewhere)."""
    if (directory / ADAPTER_BASE).is_file():
        saved = json.loads((directory / ADAPTER_BASE).read_text())
        return AdapterBase(saved.get("location"), saved.get("architecture"))
    config = json.loads((directory / ADAPTER_CONFIG).read_text())
    name = config.get("base_model_name_or_path")
    if isinstance(name, str) and re.match(HUB_REPO_PATTERN, name):
        return AdapterBase(hub_location(name, config.get("revision")))
    raise ConfigError(f"the adapter in {directory} names its base model as {name!r}, which is neither a Hub model (ORG/NAME) "
                      f"nor recorded in {ADAPTER_BASE}; merge it into its base and point at the merged model")


def merge_into(base_model: torch.nn.Module, directory: Path) -> torch.nn.Module:
    """``base_model`` with the adapter of ``directory`` merged into its weights (a plain module).
    The base may have another head than the adapter was trained on (a critic from a policy's or a
    reward model's adapter): peft wraps it as what it is."""
    from peft import PeftConfig, PeftModel

    found = str(adapter_directory(directory))
    config = PeftConfig.from_pretrained(found)
    if config.task_type != task_type(base_model):
        config.task_type = None  # the generic wrapper: no task head of its own to expect in the files
    merged = PeftModel.from_pretrained(base_model, found, config=config).merge_and_unload()
    return merged.requires_grad_(True)  # peft froze the base: loaded as from_pretrained would load it


def resume_adapter(base_model: torch.nn.Module, directory: Path, spec: LoraAdapter) -> torch.nn.Module:
    """``base_model`` under the adapter of a stage's own checkpoint, trainable (a resumed run)."""
    from peft import PeftModel

    found = adapter_directory(directory)
    wrapped = PeftModel.from_pretrained(base_model, str(found), is_trainable=True)
    setattr(wrapped, ADAPTER_ATTRIBUTE, AdapterRecord(spec, adapter_base(found)))
    return wrapped


def merged_state_dict(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """The full model's state dict (transformers keys) from a PeftModel's: each adapted weight
    ``W + scaling * B @ A`` (transposed for fan-in-fan-out layers), a trained head's copy in place of
    the original, the adapter's tensors dropped. The same arithmetic as peft's merge_and_unload,
    done on a state dict so that an engine can pass one gathered from shards."""
    scaling = config.lora_alpha / (math.sqrt(config.r) if config.use_rslora else config.r)
    merged: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key.removeprefix(PEFT_PREFIX)
        if ".lora_" in name or ".original_module." in name:
            continue
        if f".modules_to_save.{ADAPTER_NAME}." in name:
            name = name.replace(f".modules_to_save.{ADAPTER_NAME}.", ".")
        elif ".base_layer." in name:
            module, leaf = name.split(".base_layer.")
            if leaf == "weight":
                a = state[f"{PEFT_PREFIX}{module}.lora_A.{ADAPTER_NAME}.weight"].float()
                b = state[f"{PEFT_PREFIX}{module}.lora_B.{ADAPTER_NAME}.weight"].float()
                delta = (b @ a) * scaling
                value = (value.float() + (delta.T if config.fan_in_fan_out else delta)).to(value.dtype)
            name = f"{module}.{leaf}"
        merged[name] = value
    return merged


def save_model_checkpoint(model: torch.nn.Module, directory: Path, state_dict: dict | None = None) -> None:
    """A checkpoint's model files: ``save_pretrained`` for a full model; for a model training an
    adapter, the adapter and its base record, and with ``merge: true`` the merged full model at the
    root and the adapter under ``adapter/``. ``state_dict``: the whole model's, where the engine
    holds one (ZeRO-3 gathers it first), else the module's own."""
    directory = Path(directory)
    extra = {"state_dict": state_dict} if state_dict is not None else {}
    record: AdapterRecord | None = getattr(model, ADAPTER_ATTRIBUTE, None)
    if record is None:
        model.save_pretrained(str(directory), safe_serialization=True, **extra)
        return
    target = directory / ADAPTER_SUBDIR if record.spec.merge else directory
    model.save_pretrained(str(target), safe_serialization=True, save_embedding_layers=False, **extra)
    record.base.save(target)
    if record.spec.merge:
        _save_merged(model, directory, state_dict)


def _save_merged(model: torch.nn.Module, directory: Path, state_dict: dict | None = None) -> None:
    merged = merged_state_dict(state_dict if state_dict is not None else model.state_dict(), model.peft_config[ADAPTER_NAME])
    model.get_base_model().save_pretrained(str(directory), state_dict=merged, safe_serialization=True)


def save_plain_model(model: torch.nn.Module, directory: Path) -> None:
    """The model as one loadable Hugging Face directory (merged where it trains an adapter): what an
    engine that loads from disk needs."""
    if getattr(model, ADAPTER_ATTRIBUTE, None) is None:
        model.save_pretrained(str(directory), safe_serialization=True)
    else:
        _save_merged(model, directory)


class AdapterDisabled:
    """The policy with its adapter switched off: the model it started from, frozen, with no second
    copy in memory. Called like a module (no gradients; eval mode, the policy's own mode restored
    after); ``eval``/``requires_grad_`` leave the shared policy alone."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    @torch.no_grad()
    def __call__(self, *args, **kwargs):
        was_training = self.model.training
        self.model.eval()
        try:
            with self.model.disable_adapter():
                return self.model(*args, **kwargs)
        finally:
            self.model.train(was_training)

    def parameters(self):
        return self.model.parameters()

    def eval(self) -> "AdapterDisabled":
        return self

    def train(self, mode: bool = True) -> "AdapterDisabled":
        return self

    def requires_grad_(self, requires_grad: bool = True) -> "AdapterDisabled":
        return self


def adapter_reference(model: torch.nn.Module) -> AdapterDisabled | None:
    """The reference of a policy that trains an adapter (itself, adapter off); None otherwise."""
    return AdapterDisabled(model) if getattr(model, ADAPTER_ATTRIBUTE, None) is not None else None
