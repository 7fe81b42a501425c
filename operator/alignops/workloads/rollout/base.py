"""The rollout engine interface (``alignops.workloads.rollout`` says what engines there are): how to
sample, what a completion holds, what an engine does, and the registry engines add themselves to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

from alignops.algos.registry import Registry


@dataclass(frozen=True)
class SamplingSettings:
    """How to sample: ``n`` responses per prompt; ``greedy`` ignores temperature and top-p."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ()
    greedy: bool = False


@dataclass
class Completion:
    """One sampled response.

    Attributes:
        token_ids: (T,) response tokens, up to and including the end-of-sequence token or the token
            that completed a stop string; nothing after.
        text: the response decoded without special tokens.
        logprobs: (T,) the engine's log-probability of each token, or None if it gives none.
        finish_reason: ``stop`` (eos or a stop string) or ``length`` (cut at max_new_tokens).
    """

    token_ids: list[int]
    text: str
    logprobs: list[float] | None = None
    finish_reason: str = "stop"


class RolloutEngine(Protocol):
    name: str
    # prompts per generate() call the stage should send (it checks for SIGTERM between calls)
    prompts_per_call: int

    def generate(self, prompts: list[list[int]], sampling: SamplingSettings, seeds: list[int]) -> list[list[Completion]]:
        """``prompts``: token ids (bos included); ``seeds``: one per prompt. Returns ``len(prompts)``
        lists of ``sampling.n`` completions, in prompt order; the same seeds and weights give the
        same completions, and two equal prompts with different seeds are sampled independently."""

    def update_weights(self, model) -> None:
        """Sample from ``model``'s current weights from now on (colocated placement, each round);
        wakes an engine that sleeps."""

    def sleep(self) -> None:
        """Colocated placement, before the policy update: give back the accelerator memory the
        engine holds (its KV cache, its copy of the weights) until the next ``update_weights``."""


@dataclass(frozen=True)
class EngineTraits:
    """What a stage needs to know of an engine: ``loads_from_disk`` engines start from a Hugging
    Face directory and never touch the trainer's module until ``update_weights`` (a split rollout
    run then needs no in-memory copy of the policy)."""

    loads_from_disk: bool = False


@dataclass(frozen=True)
class EngineInputs:
    """What a factory may use: the trainer's model (None in a split rollout run of an engine that
    loads from disk) and tokenizer, a Hugging Face directory holding the same weights (for engines
    that load from disk), the stage's hyperparameters, and ``extra`` settings the stage derived:
    ``autocast`` (torch dtype or None), ``max_model_len`` (prompt + response tokens), ``dtype``
    (the engine's weight dtype name), ``colocated`` (the engine shares the GPU with the trainer)."""

    model: object
    tokenizer: object
    model_dir: Callable[[], object]  # -> Path; called only by engines that need a directory
    hyperparameters: object
    extra: dict = field(default_factory=dict)


# name -> factory, registered with EngineTraits
ENGINES: Registry[Callable[[EngineInputs], RolloutEngine]] = Registry("rollout engine")
