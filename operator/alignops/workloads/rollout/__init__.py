"""Rollout engines behind one interface: ``generate(prompts, sampling, seeds)`` returns, per prompt,
``sampling.n`` completions with their token ids and (where the engine gives them) the engine's own
log-probability of each sampled token; ``update_weights(model)`` makes the engine sample from the
trainer's current weights; ``sleep()`` frees the engine's accelerator memory for the update.

- ``transformers`` (``alignops.workloads.rollout.hf``): ``model.generate`` on the trainer's own
  module (colocated: no copy, nothing to sync), CPU or GPU, always available.
- ``vllm`` (``alignops.workloads.rollout.vllm_engine``): GPU rollout images only, imported lazily;
  weights reach it in checkpoint format (``alignops.workloads.rollout.weights``).

Log-probs are those of the sampling distribution after temperature (``log softmax(z / T)``), the
quantity the trainer recomputes; with ``topP < 1`` the engine's are renormalised over the nucleus, so
the rollout/trainer gap then also measures the truncation.
"""

from __future__ import annotations

import importlib

from alignops.algos.registry import UnknownNameError
from alignops.workloads.rollout.base import ENGINES, Completion, EngineInputs, EngineTraits, RolloutEngine, SamplingSettings

__all__ = ["ENGINES", "Completion", "EngineInputs", "EngineTraits", "RolloutEngine", "SamplingSettings", "engine_traits",
           "make_engine"]

# engine name -> the module that registers it, imported only when a stage asks for that engine
ENGINE_MODULES = {
    "transformers": "alignops.workloads.rollout.hf",
    "vllm": "alignops.workloads.rollout.vllm_engine",
}


def _register(name: str) -> None:
    if name not in ENGINE_MODULES:
        raise UnknownNameError(ENGINES.kind, name, tuple(sorted(ENGINE_MODULES)))
    importlib.import_module(ENGINE_MODULES[name])  # the vllm module imports vllm itself only when an engine is made


def engine_traits(name: str) -> EngineTraits:
    _register(name)
    return ENGINES.traits(name)


def make_engine(name: str, inputs: EngineInputs) -> RolloutEngine:
    """The engine registered as ``name`` (its module is imported here, so vLLM only when asked)."""
    _register(name)
    return ENGINES.get(name)(inputs)
