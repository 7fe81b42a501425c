"""The reward stage: a Hugging Face ``AutoModelForSequenceClassification`` with ``num_labels=1``
(for the demo model a ``LlamaForSequenceClassification``: the transformer of the policy or base
model plus a scalar ``score`` head read at the last non-pad token), trained on comparisons.

Loss (``alignops.algos.REWARD_LOSSES``): ``bradley_terry`` over pairs (a K-wise ranking counts as
all its K(K-1)/2 pairs; margin from the pair's ``margin`` field or ``rewardMargin``), or
``plackett_luce`` over whole rankings (Zhu, Jiao, Jordan, arXiv:2301.11270; K = 2 is Bradley-
Terry). Without ``algorithm`` the data decides: plackett_luce when any record ranks more than two
responses, bradley_terry otherwise.

Checkpoints are saved with ``save_pretrained`` (config ``architectures:
[LlamaForSequenceClassification]``, ``num_labels: 1``, ``pad_token_id`` set) plus the tokenizer,
so the RL stages and any Hugging Face user load the reward model as it is.
"""

from __future__ import annotations

import torch
from transformers import LlamaForSequenceClassification

from alignops.algos import REWARD_LOSSES, UnknownNameError
from alignops.api.common import Architecture
from alignops.api.hyperparameters import RewardHyperparameters
from alignops.workloads.context import ConfigError
from alignops.workloads.data.batching import to_device
from alignops.workloads.data.held_out import load_held_out_pairs
from alignops.workloads.evaluation.pairs import reward_pair_metrics
from alignops.workloads.models.build import build_scalar_head_model
from alignops.workloads.models.loading import float32_head, load_reward_model
from alignops.workloads.models.policy import Starting, starting_policy
from alignops.workloads.models.scoring import reward_scores
from alignops.workloads.stages.base import Stage
from alignops.workloads.training.loop import MicroBatchLoss


def build_reward_model(arch: Architecture, tokenizer) -> LlamaForSequenceClassification:
    """The base architecture's transformer under a freshly initialised scalar head (float32)."""
    return float32_head(build_scalar_head_model(arch, tokenizer, LlamaForSequenceClassification))


def choose_algorithm(requested: str | None, most_responses: int) -> str:
    name = requested or ("plackett_luce" if most_responses > 2 else "bradley_terry")
    try:
        REWARD_LOSSES.get(name)
    except UnknownNameError as exc:
        raise ConfigError(str(exc)) from None
    return name


class RewardStage(Stage):
    hyperparameters = RewardHyperparameters

    def load_inputs(self) -> Starting:
        start = starting_policy(self.ctx, loader=load_reward_model, builder=build_reward_model)
        start.model.config.pad_token_id = start.tokenizer.pad_token_id
        return start

    def build_dataset(self) -> int:
        self.sequences = self.training_data("comparisons", "pairs", reward=True).items
        self.algorithm = choose_algorithm(self.ctx.config.algorithm, self.sequences.width())  # the data decides by default
        self.loss_of = REWARD_LOSSES.get(self.algorithm)
        return len(self.sequences)

    def build_held_out(self) -> None:
        self.held, _ = load_held_out_pairs(self.ctx, self.hp.eval_size, self.tokenizer, self.hp.max_length, self.data.carved)

    def evaluate(self, model) -> dict[str, float]:
        return reward_pair_metrics(model, self.held, self.pad)

    def loss_units(self, indices: list[int]) -> float:
        """Rankings for a whole-ranking loss, else the pairs each ranking holds."""
        if REWARD_LOSSES.traits(self.algorithm).whole_rankings:
            return len(indices)
        return sum(len(self.sequences[i]) * (len(self.sequences[i]) - 1) / 2 for i in indices)

    def loss(self, model, indices: list[int]) -> MicroBatchLoss:
        hp = self.hp
        items = [self.sequences[i] for i in indices]
        counts = [len(item) for item in items]
        flat = [example for item in items for example in item]
        scores = reward_scores(model, flat, self.pad)
        width = max(counts)
        # (B, K) scores best first; rows with fewer responses are masked. The pairs (row, above,
        # below) are a function of the counts alone: found on the host, never by a
        # boolean index of a device tensor (a host sync)
        host_mask = torch.tensor([[k < n for k in range(width)] for n in counts])
        upper = torch.triu(torch.ones(width, width, dtype=torch.bool), diagonal=1)
        row, above, below = to_device((upper & host_mask.unsqueeze(-1) & host_mask.unsqueeze(-2)).nonzero().t(), scores.device)
        mask = to_device(host_mask, scores.device)
        table = torch.zeros(mask.shape, dtype=scores.dtype, device=scores.device).masked_scatter(mask, scores)
        better, worse = table[row, above], table[row, below]
        if REWARD_LOSSES.traits(self.algorithm).whole_rankings:
            loss = self.loss_of(table, mask).mean()
        else:
            given = [self.sequences.row(i)["margin"] for i in indices]
            margins = to_device(torch.tensor([m if m is not None else hp.reward_margin for m in given], dtype=scores.dtype), scores.device)
            margin = margins[row]
            loss = self.loss_of(better, worse, margin).mean()
        gap = (better - worse).detach()
        metrics = {"reward_accuracy": (gap > 0).float().mean(), "reward_margin": gap.mean()}  # read back at log steps
        return MicroBatchLoss(loss=loss, tokens=sum(len(e.input_ids) for e in flat), metrics=metrics)


STAGE = RewardStage
