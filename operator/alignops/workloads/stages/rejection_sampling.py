"""The rejection_sampling stage: RAFT and ReST, rejection-sampling fine-tuning in rounds
(``alignops.workloads.stages.iterative``).

Each round samples ``samplesPerPrompt`` responses to ``promptsPerRound`` prompts with the current
policy and scores them with the reward functions (``hyperparameters.rewards``: verifiers, or the
``rewardModel`` input's scores). The algorithm names the round's training sets
(``SELECTIONS``), each a selection of the round's responses that the policy is fine-tuned on with the
SFT loss for ``stepsPerRound`` optimiser steps:

- ``raft`` (Dong et al. 2023, arXiv:2304.06767): one set, the best ``topK`` responses of each prompt
  (of those with reward >= ``minReward`` when set);
- ``rest`` (Gulcehre et al. 2023, arXiv:2308.08998): the round is a Grow step; then one Improve step
  per threshold tau_i of ``thresholds`` (non-decreasing), each fine-tuning, from where the previous
  one left the policy, on the Grow set's responses with reward >= tau_i.

Round record keys beside the sampler's (``reward_mean``, ...): ``kept`` (responses trained on,
summed over the round's sets), ``kept_<i>`` per ReST Improve step, ``loss``, ``grad_norm``.
Status metrics: ``accuracyBefore``/``accuracyAfter`` (held-out greedy accuracy), ``rewardFirst`` /
``rewardLast``, ``lossFirst``, ``loss``, ``rounds``, ``steps``, ``kept`` (summed over every round).
"""

from __future__ import annotations

from typing import Callable

import torch

from alignops.algos import Registry, UnknownNameError, raft_keep, rest_keep
from alignops.api.iterative import RejectionSamplingHyperparameters
from alignops.workloads.context import ConfigError
from alignops.workloads.rl.store import RoundRollouts
from alignops.workloads.stages.iterative import IterativeStage, rollout_example
from alignops.workloads.data.sft import response_tokens
from alignops.workloads.stages.sft import sft_loss

Selection = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (rewards, group ids) -> keep mask
SELECTIONS: Registry[Callable[[RejectionSamplingHyperparameters], list[Selection]]] = Registry("rejection sampling algorithm")


@SELECTIONS.register("raft")
def raft(hp: RejectionSamplingHyperparameters) -> list[Selection]:
    return [lambda rewards, groups: raft_keep(rewards, groups, hp.top_k, hp.min_reward)]


@SELECTIONS.register("rest")
def rest(hp: RejectionSamplingHyperparameters) -> list[Selection]:
    return [lambda rewards, groups, tau=tau: rest_keep(rewards, tau) for tau in hp.thresholds]


class RejectionSamplingStage(IterativeStage):
    hyperparameters = RejectionSamplingHyperparameters
    default_algorithm = "raft"
    history_keys = ("kept",)

    def check(self) -> None:
        try:
            self.selections = SELECTIONS.get(self.algorithm)(self.hp)
        except UnknownNameError as exc:
            raise ConfigError(str(exc)) from None

    def training_sets_per_round(self) -> int:
        return len(self.selections)

    def train_round(self, batch: RoundRollouts) -> dict[str, float]:
        rollouts = batch.rollouts
        rewards = torch.tensor([r.score for r in rollouts], dtype=torch.float32)
        groups = torch.tensor([r.group for r in rollouts])
        examples = [rollout_example(r) for r in rollouts]
        figures: dict[str, float] = {"kept": 0.0}
        trained = []
        for i, select in enumerate(self.selections):
            kept = [examples[row] for row in select(rewards, groups).nonzero().flatten().tolist()]
            figures["kept"] += len(kept)
            if len(self.selections) > 1:
                figures[f"kept_{i + 1}"] = float(len(kept))
            step = self.train_steps(len(kept), lambda model, idx, kept=kept: sft_loss(model, [kept[j] for j in idx], self.pad), i,
                                    units=lambda idx, kept=kept: response_tokens([kept[j] for j in idx]))  # a token mean
            if step:
                trained.append(step)
        for name in {k for t in trained for k in t}:  # the mean over the sets trained on
            figures[name] = sum(t.get(name, 0.0) for t in trained) / len(trained)
        return figures

    def totals(self) -> dict[str, float]:
        return {"kept": self.history_sum("kept")}


STAGE = RejectionSamplingStage
