"""The online_dpo stage: online DPO from AI feedback (OAIF, Guo et al. 2024, arXiv:2402.04792) and
iterative DPO, in rounds (``alignops.workloads.stages.iterative``).

Each round samples ``samplesPerPrompt`` responses to ``promptsPerRound`` prompts with the current
policy and a judge labels pairs of them:

- the reward functions (``hyperparameters.rewards``: verifiers, or the ``rewardModel`` input, a
  `reward` stage's model): each prompt's best response against its worst (``best_worst_pairs``; with
  two samples this is OAIF's pair; a prompt whose samples all score the same gives no pair);
- an LLM ``judge`` (``alignops.workloads.judge``): the responses of a prompt in consecutive pairs,
  the judge's pick chosen; answers it cannot parse (or, with ``bothOrders``, that disagree) are
  counted and the pair skipped. A round in which no answer parses fails the stage (exit 78): the
  template, the pattern or the model does not work, and a retry would not change that.

Then ``stepsPerRound`` optimiser steps of the ``algorithm``'s paired loss
(``alignops.algos.PREFERENCE_LOSSES``, the preference stage's ``pair_loss``) on the round's fresh
pairs. The reference is the policy's starting checkpoint (or ``reference``), frozen (OAIF); with
``syncReference`` the policy as it starts each round (iterative DPO). Its log-probs of a round's
pairs are computed once, before the round's first step.

Round record keys: ``pairs``, ``ties`` (prompts or pairs without a verdict), ``judge_unparsed``,
``judge_inconsistent`` (LLM judge), ``loss``, ``reward_accuracy``, ``reward_margin``,
``logp_chosen``, ``logp_rejected`` (means over the round's steps). Status metrics:
``accuracyBefore``/``accuracyAfter``, ``rewardFirst``/``rewardLast`` (judge: the reward functions;
with an LLM judge the mean score, 0.5 by construction), ``lossFirst``, ``loss``, ``rounds``, ``steps``, ``pairs``,
``judgeUnparsed``, ``judgeInconsistent``.
"""

from __future__ import annotations

import json

import torch

from alignops.algos import best_worst_pairs
from alignops.api.iterative import OnlineDpoHyperparameters
from alignops.storage.base import join_key
from alignops.workloads.context import ConfigError
from alignops.workloads.judge import JudgeScorer, LlmJudge, consecutive_pairs, load_judge
from alignops.workloads.models.reference import frozen_reference
from alignops.workloads.models.scoring import sequence_logps_batched
from alignops.workloads.rl.prompts import load_prompts
from alignops.workloads.rl.store import RoundRollouts, round_key
from alignops.workloads.stages.iterative import IterativeStage, rollout_example
from alignops.workloads.stages.preference import loss_options, pair_loss, resolve_loss

JUDGEMENTS = "judgements.jsonl"


def judged_pairs(batch: RoundRollouts) -> tuple[list[tuple[int, int]], int]:
    """(chosen row, rejected row) of every pair the LLM judge decided, and the pairs it did not."""
    pairs, undecided = [], 0
    for i, j in consecutive_pairs([r.group for r in batch.rollouts]):
        a, b = batch.rollouts[i].score, batch.rollouts[j].score
        if a == b:
            undecided += 1
        else:
            pairs.append((i, j) if a > b else (j, i))
    return pairs, undecided


class OnlineDpoStage(IterativeStage):
    hyperparameters = OnlineDpoHyperparameters
    default_algorithm = "dpo"
    history_keys = ("pairs", "ties", "judge_unparsed", "judge_inconsistent")

    def check(self) -> None:
        self.options = loss_options(self.hp)
        self.loss_of, self.traits = resolve_loss(self.algorithm, self.options)
        if not self.traits.paired:
            raise ConfigError(f"online_dpo trains on pairs; {self.algorithm} takes unpaired examples")
        self.judge_spec = self.ctx.config.judge
        self.judge_scorer: JudgeScorer | None = None

    def load_prompts(self) -> tuple[list[dict], list[dict]]:
        # an LLM judge needs no answers: only the reward functions' verifiers read them
        return load_prompts(self.ctx, self.hp, self.tokenizer, scored_by_rewards=self.judge_spec is None)

    def prepare(self) -> None:
        self.reference = None
        if self.traits.needs_reference and not self.hp.sync_reference:
            self.reference = frozen_reference(self.ctx, self.trainer.start, untrained=True, place=self.trainer.loop.engine.frozen)

    def scorer(self):
        if self.judge_spec is None:
            return super().scorer()
        model, tokenizer = load_judge(self.ctx)
        judge = LlmJudge(model, tokenizer, self.judge_spec, self.hp.generation_batch_size,
                         should_stop=lambda: self.trainer.check_stop(self.round))
        self.judge_scorer = JudgeScorer(judge)
        return self.judge_scorer

    def after_sampling(self, batch: RoundRollouts) -> None:
        if self.judge_scorer is not None:  # the judge's raw answers, for inspection (not read back)
            lines = "".join(json.dumps(j.as_record()) + "\n" for j in self.judge_scorer.judgements)
            self.ctx.store.put_bytes(join_key(round_key(self.ctx.config.stage_key, batch.round), JUDGEMENTS), lines.encode())

    def pairs_of(self, batch: RoundRollouts) -> tuple[list[tuple[int, int]], dict[str, float]]:
        if self.judge_spec is None:
            rewards = torch.tensor([r.score for r in batch.rollouts], dtype=torch.float32)
            pairs, ties = best_worst_pairs(rewards, torch.tensor([r.group for r in batch.rollouts]))
            return pairs, {"ties": float(ties)}
        pairs, undecided = judged_pairs(batch)
        count = lambda key: sum(r.rewards.get(key, 0.0) for r in batch.rollouts) / 2  # noqa: E731 - both rows of a pair carry it
        figures = {"ties": float(undecided), "judge_unparsed": count("judge_unparsed"), "judge_inconsistent": count("judge_inconsistent")}
        judged = len(pairs) + undecided
        if judged and figures["judge_unparsed"] == judged:
            example = ""
            if self.judge_scorer is not None and self.judge_scorer.judgements:
                example = f"; its first answer was {self.judge_scorer.judgements[0].answers[0]!r}"
            raise ConfigError(f"round {batch.round}: none of the judge's {judged} answers matched judge.answerPattern "
                              f"{self.judge_spec.answer_pattern!r}{example}. Check judge.template and judge.answerPattern, "
                              "or use a judge model that follows the instruction")
        return pairs, figures

    def train_round(self, batch: RoundRollouts) -> dict[str, float]:
        rows, figures = self.pairs_of(batch)
        rollouts = batch.rollouts
        items = [[rollout_example(rollouts[c]), rollout_example(rollouts[r])] for c, r in rows]
        figures["pairs"] = float(len(items))
        ref = None
        if items and self.traits.needs_reference:
            reference = self.model if self.hp.sync_reference else self.reference
            flat = [example for pair in items for example in pair]
            ref = sequence_logps_batched(reference, flat, self.pad, self.hp.batch_size).logp_sum.float().view(-1, 2)
        figures.update(self.train_steps(len(items), lambda model, idx: pair_loss(
            model, [items[i] for i in idx], ref[idx] if ref is not None else None, self.loss_of, self.options, self.pad)))
        return figures

    def totals(self) -> dict[str, float]:
        out = {"pairs": self.history_sum("pairs")}
        if self.judge_spec is not None:
            out.update(judgeUnparsed=self.history_sum("judge_unparsed"), judgeInconsistent=self.history_sum("judge_inconsistent"))
        return out


STAGE = OnlineDpoStage
