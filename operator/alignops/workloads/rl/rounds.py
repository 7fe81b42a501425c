"""Training in rounds on the policy's own samples: what the ``rl`` stage's trainer and the stages
built on its pieces (``rejection_sampling``, ``online_dpo``, ``spin``) share.

``RoundTrainer`` holds the policy (the stage's last committed round on resume, else its input), the
``RlState`` every checkpoint carries, the stage's ``TrainLoop`` (its engine steps the optimizer, on
one process or several; it commits and restores), and the held-out prompts. ``finish_round`` evaluates when due, commits the
round's checkpoint ``<stage_key>/round-<n>/checkpoint-<step>/`` and logs the round's record;
``result`` turns the rounds' history into the stage's status metrics.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Sequence

from alignops.contract import StageResult
from alignops.demo.arithmetic import is_correct
from alignops.workloads.context import RunContext, StopRequested
from alignops.workloads.evaluation.generation import greedy_accuracy
from alignops.workloads.models.checkpointing import enable_gradient_checkpointing
from alignops.workloads.models.policy import starting_policy
from alignops.workloads.training.engine import Trainable
from alignops.workloads.training.loop import TrainLoop

RL_STATE = "rl_state.json"


@dataclass
class RlState:
    """What every checkpoint carries beyond the weights and the optimizer: rounds done, the KL
    coefficient (rl), the held-out figures before round 1, and a one-line summary per round."""

    rounds_done: int = 0
    kl_coef: float | None = None
    before: dict[str, float] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)

    @classmethod
    def load(cls, directory: Path) -> "RlState":
        return cls(**json.loads((directory / RL_STATE).read_text()))

    def save(self, directory: Path) -> None:
        (directory / RL_STATE).write_text(json.dumps(asdict(self)))


class RoundTrainer:
    """The policy, its ``RlState``, the TrainLoop (``make_loop``), evaluation and the per-round commit.

    ``history_keys``: the record keys each round keeps in ``RlState.history`` (and so in every
    checkpoint); ``result`` reads the stage's status metrics from them."""

    history_keys: ClassVar[tuple[str, ...]] = ("round", "reward_mean", "loss", "kl", "accuracy", "logprob_gap",
                                               "response_length_mean")

    def __init__(self, ctx: RunContext, hp):
        self.ctx, self.hp = ctx, hp
        self.eval_records: list[dict] = []
        self.check: Callable[[str, str], bool] = is_correct
        start = starting_policy(ctx)
        self.start = start
        self.model, self.tokenizer = start.model, start.tokenizer
        self.state = RlState.load(start.directory) if start.resume is not None else RlState()
        if hp.gradient_checkpointing:
            enable_gradient_checkpointing(self.model)

    @property
    def world(self):
        return self.ctx.world

    def make_loop(self, total_steps: int, extra_trainables: Sequence[Trainable] = ()) -> TrainLoop:
        """The stage's TrainLoop over ``total_steps`` optimiser steps (no dataset pass: the stage feeds
        ``optimizer_step`` its own micro-batches). Forward passes go through the engine's model from
        here on (ZeRO-3 needs its hooks); ``resume`` restores the checkpoint once every model the
        stage places is loaded."""
        self.loop = TrainLoop(self.ctx, self.model, self.hp, None, self._save_extra, total_steps=total_steps,
                              extra_trainables=extra_trainables)
        self.model = self.loop.engine.model
        return self.loop

    def resume(self) -> None:
        if self.start.resume is not None:
            self.loop.restore(self.start.directory, self.start.resume)

    def save_more(self, directory: Path) -> None:
        """What a subclass adds to every checkpoint (the rl stage: its critic); every process calls it."""

    def _save_extra(self, directory: Path) -> None:
        self.tokenizer.save_pretrained(str(directory))
        self.save_more(directory)
        self.state.save(directory)

    def begin(self, eval_records: list[dict], check: Callable[[str, str], bool] = is_correct) -> None:
        """Set the held-out prompts and how an answer is checked; a fresh stage evaluates its
        starting policy on them."""
        self.eval_records, self.check = eval_records, check
        if self.start.resume is None:
            self.state.before = self.evaluate()

    def evaluate(self) -> dict[str, float]:
        if not self.eval_records:
            return {}
        with self.loop.engine.gathered():  # every process evaluates the same prompts
            return {"accuracy": greedy_accuracy(self.model, self.tokenizer, self.eval_records, self.hp.max_new_tokens,
                                                self.check)}

    def check_stop(self, round_: int) -> None:
        if self.loop.stop_requested():  # every process agrees, so all of them stop at the same step
            self.loop.wait_committed()
            raise StopRequested(f"stopped while training round {round_}; rounds 1..{self.state.rounds_done} are committed")

    def finish_round(self, round_: int, record: dict) -> dict:
        """Evaluate when due, commit round ``round_``'s checkpoint, log its record."""
        hp = self.hp
        if round_ % hp.eval_every == 0 or round_ == hp.rounds:
            started = time.perf_counter()
            record.update(self.evaluate())
            record["time_eval"] = time.perf_counter() - started
        self.state.rounds_done = round_
        self.state.history.append({k: record[k] for k in self.history_keys if k in record})
        self.loop.state.round = round_
        self.loop.commit(final=round_ == hp.rounds)  # uploaded while the next round samples
        self.ctx.metrics.log(record)
        return record

    def result(self, extra: dict[str, float] | None = None) -> StageResult:
        metrics: dict[str, float] = {"rounds": self.state.rounds_done, "steps": self.loop.state.step,
                                     "worldSize": self.world.size}
        for name, value in self.state.before.items():
            metrics[f"{name}Before"] = value
        history = self.state.history
        if history:
            last = history[-1]
            if "reward_mean" in history[0]:
                metrics.update(rewardFirst=history[0]["reward_mean"], rewardLast=last["reward_mean"])
            trained = [h for h in history if "loss" in h]
            if trained:
                metrics["loss"] = trained[-1]["loss"]
            for key, name in (("kl", "kl"), ("logprob_gap", "logprobGap"), ("response_length_mean", "responseLength")):
                if key in last:
                    metrics[name] = last[key]
            evaluated = [h for h in history if "accuracy" in h]
            if evaluated:
                metrics["accuracyAfter"] = evaluated[-1]["accuracy"]
        metrics.update(extra or {})
        committed = self.loop.wait_committed()
        uri = committed.uri if committed is not None else None
        return StageResult(checkpoint_uri=uri, metrics=metrics)
