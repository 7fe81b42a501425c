"""The rank stage: RRHF (Yuan et al., arXiv:2304.05302) over K responses per prompt.

Each response's score is its length-normalised log-prob p_i; the loss
(``alignops.algos.rrhf``) is ``rankWeight * sum_{r_i < r_j} max(0, p_i - p_j)`` plus the mean token
NLL of the best response. Rewards r are the records' ``scores`` when given, else the ranking (K-1
for the best down to 0). Pairs are rankings of two. No reference model.

Held-out figures: ``accuracy`` (chosen response's per-token mean log-prob above the rejected one's,
RRHF's own score), log-prob margins and, on the demo task, ``answerAccuracy``.
"""

from __future__ import annotations

import torch

from alignops.algos import RANKING_LOSSES, UnknownNameError, best_response_index
from alignops.api.hyperparameters import RankHyperparameters
from alignops.workloads.context import ConfigError
from alignops.workloads.data.batching import to_device
from alignops.workloads.data.held_out import load_held_out_pairs
from alignops.workloads.data.sft import response_tokens
from alignops.workloads.evaluation.pairs import answer_accuracy, pair_logps, preference_metrics
from alignops.workloads.models.scoring import sequence_logps
from alignops.workloads.stages.base import Stage
from alignops.workloads.training.loop import MicroBatchLoss


class RankStage(Stage):
    hyperparameters = RankHyperparameters
    default_algorithm = "rrhf"

    def check(self) -> None:
        try:
            self.loss_of = RANKING_LOSSES.get(self.algorithm)
        except UnknownNameError as exc:
            raise ConfigError(str(exc)) from None

    def build_dataset(self) -> int:
        self.sequences = self.training_data("comparisons", "rankings").items
        return len(self.sequences)

    def build_held_out(self) -> None:
        self.held, self.verifiable = load_held_out_pairs(self.ctx, self.hp.eval_size, self.tokenizer, self.hp.max_length,
                                                         self.data.carved)

    def evaluate(self, model) -> dict[str, float]:
        if self.held is None:
            return {}
        metrics = preference_metrics(*pair_logps(model, self.held, self.pad), length_normalised=True)
        if self.verifiable:
            metrics["answerAccuracy"] = answer_accuracy(model, self.tokenizer, self.held)
        return metrics

    def loss(self, model, indices: list[int]) -> MicroBatchLoss:
        counts = [len(self.sequences[i]) for i in indices]
        sequences = [e for i in indices for e in self.sequences[i]]
        scores = sequence_logps(model, sequences, self.pad)
        width = max(counts)
        device = scores.logp_sum.device
        mask = to_device(torch.tensor([[k < n for k in range(width)] for n in counts]), device)
        # (B, K) per-token mean log-probs and rewards; padded slots are masked
        p = torch.zeros(mask.shape, dtype=scores.logp_sum.dtype, device=device).masked_scatter(mask, scores.logp_mean)
        rewards = to_device(torch.tensor([self.sequences.rewards(i) + [0.0] * (width - n) for i, n in zip(indices, counts)]), device)
        best = best_response_index(rewards, mask)
        best_nll = -p.gather(1, best.unsqueeze(1)).squeeze(1)
        losses = self.loss_of(p, rewards, mask, best_nll, rank_weight=self.hp.rank_weight)
        metrics = {"best_nll": best_nll.detach().mean(), "rank_loss": (losses - best_nll).detach().mean()}
        return MicroBatchLoss(losses.mean(), response_tokens(sequences), metrics)


STAGE = RankStage
