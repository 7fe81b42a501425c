"""What a model gives a batch of sequences in one forward pass: summed response log-probs (a policy),
a scalar per sequence (a reward model), a value per position (a critic)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignops.algos import IGNORE_INDEX, sequence_logprob
from alignops.workloads.data.batching import sft_batch
from alignops.workloads.data.sft import SftExample
from alignops.workloads.models.token_logps import causal_token_logprobs


@dataclass(frozen=True)
class SequenceScores:
    """Per-sequence results of one forward pass, each (N,)."""

    logp_sum: torch.Tensor
    lengths: torch.Tensor  # response tokens scored (eos included)

    @property
    def logp_mean(self) -> torch.Tensor:
        return self.logp_sum / self.lengths.clamp(min=1)


def sequence_logps(model, examples: list[SftExample], pad_token_id: int) -> SequenceScores:
    """Summed response log-probabilities of N sequences in one forward pass (right padding).

    A preference batch passes chosen and rejected together (TRL's concatenated forward): one call
    instead of two, and the same padding width for both. The (N, L, V) logits are never formed whole
    (``causal_token_logprobs``)."""
    device = next(model.parameters()).device
    input_ids, labels, attention = sft_batch(examples, pad_token_id, device)
    token_logps, _ = causal_token_logprobs(model, input_ids, attention, labels)
    mask = labels[:, 1:] != IGNORE_INDEX
    return SequenceScores(sequence_logprob(token_logps, mask, "sum"), mask.sum(-1))


@torch.no_grad()
def sequence_logps_batched(model, examples: list[SftExample], pad_token_id: int, batch_size: int = 64) -> SequenceScores:
    """``sequence_logps`` without gradients, over any number of sequences in chunks."""
    model.eval()
    parts = [sequence_logps(model, examples[i : i + batch_size], pad_token_id) for i in range(0, len(examples), batch_size)]
    return SequenceScores(torch.cat([p.logp_sum for p in parts]), torch.cat([p.lengths for p in parts]))


def reward_scores(model, examples: list[SftExample], pad_token_id: int) -> torch.Tensor:
    """(N,) scalar rewards of a sequence classifier (read at the last non-pad token), one forward."""
    input_ids, _, attention = sft_batch(examples, pad_token_id, next(model.parameters()).device)
    return model(input_ids=input_ids, attention_mask=attention).logits[:, 0].float()


def token_values(critic, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L-1) values V(s_t) aligned with next-token log-probs: position t's value is read from the
    hidden state that predicts token t+1 (the state before that action)."""
    return critic(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1, 0].float()
