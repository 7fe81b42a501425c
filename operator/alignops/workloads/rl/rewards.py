"""Reward functions of the ``rl`` stage, registered by name and combined with weights:
``R(x, y) = sum_k w_k r_k(x, y)``.

Each factory in ``REWARD_FUNCTIONS`` takes the term's options and the stage's resources and returns
``fn(batch: ScoringBatch) -> (B,) float tensor``. Names and options are those of
``alignops.api.rl.REWARD_OPTIONS`` (the API lists them without importing torch; a test keeps the
two in step).

- ``exact_answer``: 1 if the response's answer equals the record's ``answer`` (the demo task's
  ``alignops.demo.arithmetic.is_correct``: leading digits), else 0.
- ``arithmetic``: 1 if the prompt is a demo sum ``a+b=`` and the response's leading digits are
  that sum, else 0: the demo's verifier for generated tasks, which have no reference answer.
- ``regex``: 1 if the response matches ``pattern`` (anywhere, or whole with ``fullMatch``), else 0.
- ``length_penalty``: ``-max(0, T - freeTokens) / maxNewTokens`` with T the response's tokens.
- ``kimi_length``: Kimi k1.5's length reward within each prompt's group
  (``alignops.algos.kimi_length_reward``, correctness from ``exact_answer``; arXiv:2501.12599).
- ``reward_model``: the ``rewardModel`` input's score (``AutoModelForSequenceClassification``,
  ``num_labels=1``, read at the last non-pad token) of ``bos + prompt + response + eos``, the
  tokenisation its ``reward`` stage trained on.
- ``code_execution`` (RLTF, code RLVR): the response's Python code runs in the sandbox
  (``alignops.workloads.sandbox``, threat model in docs/sandbox.md); 1 if it exits 0 and its
  stdout (stripped) is the record's ``answer`` (any output when the record has none), else 0.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from alignops.algos import kimi_length_reward
from alignops.algos.registry import Registry
from alignops.api.rl import RewardOptions, RewardTerm
from alignops.demo.arithmetic import is_correct, sum_asked
from alignops.workloads.context import ConfigError
from alignops.workloads.data.sft import reward_example
from alignops.workloads.models.loading import load_reward_model, load_tokenizer
from alignops.workloads.models.scoring import reward_scores
from alignops.workloads.sandbox import Limits, Outcome, run_programs


@dataclass
class ScoringBatch:
    """B responses to score. ``group_ids`` (B,) says which prompt each answers; ``lengths`` (B,) are
    response lengths in tokens; ``answers`` are the records' reference answers (None if absent)."""

    prompts: list[str]
    responses: list[str]
    answers: list[str | None]
    lengths: torch.Tensor
    group_ids: torch.Tensor
    max_new_tokens: int


@dataclass
class RewardResources:
    """What factories may need beyond their options: the reward model's directory (lazily loaded)."""

    reward_model_dir: Path | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_size: int = 64
    # places a frozen model as the stage's engine places models (sharded under ZeRO-3); None: as is
    place: Callable[[torch.nn.Module], torch.nn.Module] | None = None


RewardFn = Callable[[ScoringBatch], torch.Tensor]
REWARD_FUNCTIONS: Registry[Callable[[RewardOptions, RewardResources], RewardFn]] = Registry("reward function")


# the rewards that compare a response with the record's `answer` (a prompt without one scores nothing)
NEEDS_ANSWER = frozenset({"exact_answer", "kimi_length"})


def _correct(batch: ScoringBatch) -> torch.Tensor:
    if any(a is None for a in batch.answers):
        raise ConfigError("the exact_answer and kimi_length rewards need an `answer` in every prompt record")
    return torch.tensor([is_correct(r, a) for r, a in zip(batch.responses, batch.answers)], dtype=torch.bool)


@REWARD_FUNCTIONS.register("exact_answer")
def exact_answer(options: RewardOptions, resources: RewardResources) -> RewardFn:
    return lambda batch: _correct(batch).float()


@REWARD_FUNCTIONS.register("arithmetic")
def arithmetic(options: RewardOptions, resources: RewardResources) -> RewardFn:
    """The demo task's verifier on the prompt alone (generated tasks have no reference answer)."""
    def fn(batch: ScoringBatch) -> torch.Tensor:
        sums = [sum_asked(p) for p in batch.prompts]
        return torch.tensor([s is not None and is_correct(r, s) for r, s in zip(batch.responses, sums)], dtype=torch.float32)

    return fn


@REWARD_FUNCTIONS.register("regex")
def regex(options: RewardOptions, resources: RewardResources) -> RewardFn:
    pattern = re.compile(options.pattern)
    match = pattern.fullmatch if options.full_match else pattern.search
    return lambda batch: torch.tensor([match(r) is not None for r in batch.responses], dtype=torch.float32)


@REWARD_FUNCTIONS.register("length_penalty")
def length_penalty(options: RewardOptions, resources: RewardResources) -> RewardFn:
    free = options.free_tokens or 0

    def fn(batch: ScoringBatch) -> torch.Tensor:
        return -(batch.lengths.float() - free).clamp(min=0) / max(1, batch.max_new_tokens)

    return fn


@REWARD_FUNCTIONS.register("kimi_length")
def kimi_length(options: RewardOptions, resources: RewardResources) -> RewardFn:
    return lambda batch: kimi_length_reward(batch.lengths, _correct(batch), batch.group_ids).float()


class RewardModelScorer:
    """Scores with a ``reward`` stage's checkpoint; loaded on first use, frozen."""

    def __init__(self, directory: Path, device: torch.device, batch_size: int, place=None):
        model = load_reward_model(directory).to(device).eval().requires_grad_(False)
        self.tokenizer = load_tokenizer(directory)
        model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model = place(model) if place is not None else model
        self.batch_size = batch_size
        self.max_length = getattr(self.model.config, "max_position_embeddings", 2048)

    @torch.no_grad()
    def __call__(self, batch: ScoringBatch) -> torch.Tensor:
        examples = [reward_example(p, r, self.tokenizer, self.max_length) for p, r in zip(batch.prompts, batch.responses)]
        scores = [reward_scores(self.model, examples[i : i + self.batch_size], self.tokenizer.pad_token_id)
                  for i in range(0, len(examples), self.batch_size)]
        return torch.cat(scores).cpu() if scores else torch.zeros(0)


@REWARD_FUNCTIONS.register("reward_model")
def reward_model(options: RewardOptions, resources: RewardResources) -> RewardFn:
    if resources.reward_model_dir is None:
        raise ConfigError("the reward_model reward needs the rewardModel input")
    return RewardModelScorer(resources.reward_model_dir, resources.device, resources.batch_size, resources.place)


CODE_BLOCK = re.compile(r"```[a-zA-Z0-9_+-]*\n(.*?)(?:```|$)", re.DOTALL)


def extract_code(response: str) -> str:
    """The program in a response: its first fenced block (```python ... ```), else all of it."""
    match = CODE_BLOCK.search(response)
    return match.group(1) if match else response


def execution_reward(outcome: Outcome, expected: str | None) -> float:
    """1 when the program exited 0 in time and printed ``expected`` (stripped; any output when None)."""
    if not outcome.succeeded:
        return 0.0
    return float(expected is None or outcome.stdout.strip() == expected.strip())


@REWARD_FUNCTIONS.register("code_execution")
def code_execution(options: RewardOptions, resources: RewardResources) -> RewardFn:
    seconds = options.timeout_seconds or 2.0
    limits = Limits(wall_seconds=seconds, cpu_seconds=max(1, math.ceil(seconds)), memory_mb=options.memory_mb or 256)
    warned = []

    def fn(batch: ScoringBatch) -> torch.Tensor:
        # the sandbox's directories go to the temp directory (TMPDIR: the pod's scratch volume), whose
        # parents the sandbox uid can pass through, unlike the stage's private scratch directory
        outcomes, isolation = run_programs([extract_code(r) for r in batch.responses], limits)
        if not warned:
            warned.append(True)
            for gap in isolation.missing():
                print(f"warning: code_execution sandbox: {gap} (docs/sandbox.md)", file=sys.stderr)
        return torch.tensor([execution_reward(o, a) for o, a in zip(outcomes, batch.answers)], dtype=torch.float32)

    return fn


class RewardMix:
    """The weighted sum of the configured reward functions."""

    def __init__(self, terms: list[RewardTerm], resources: RewardResources):
        self.terms = terms
        self.functions = [REWARD_FUNCTIONS.get(t.name)(t.options or RewardOptions(), resources) for t in terms]

    def __call__(self, batch: ScoringBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(total (B,), {term name: its unweighted (B,) reward}); a name used twice is suffixed."""
        total = torch.zeros(len(batch.responses))
        parts: dict[str, torch.Tensor] = {}
        for term, fn in zip(self.terms, self.functions):
            values = fn(batch).float().cpu()
            name = term.name if term.name not in parts else f"{term.name}_{len(parts)}"
            parts[name] = values
            total = total + term.weight * values
        return total, parts


def default_terms(has_reward_model: bool) -> list[RewardTerm]:
    """Without ``rewards``: the reward model when one is given, else the exact-answer verifier."""
    return [RewardTerm(name="reward_model" if has_reward_model else "exact_answer")]
