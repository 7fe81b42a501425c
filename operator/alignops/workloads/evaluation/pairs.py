"""Held-out figures on comparison pairs, for the reward, preference and rank stages.

Preference accuracy: the share of held-out pairs in which the policy gives the chosen response a
higher log-probability than the rejected one (summed over response tokens, or per-token mean for
the length-normalised losses), so an SFT model has a figure before any preference training.
Reward accuracy: the share in which the reward model scores chosen above rejected.
"""

from __future__ import annotations

import torch

from alignops.algos import IGNORE_INDEX, masked_mean
from alignops.workloads.data.batching import sft_batch
from alignops.workloads.data.held_out import HeldOutPairs
from alignops.workloads.data.sft import SftExample
from alignops.workloads.evaluation.generation import greedy_accuracy
from alignops.workloads.models.scoring import SequenceScores, reward_scores, sequence_logps_batched


def pair_logps(model, held: HeldOutPairs, pad_token_id: int) -> tuple[SequenceScores, SequenceScores]:
    """(chosen, rejected) log-prob scores of every held-out pair."""
    scores = sequence_logps_batched(model, held.chosen + held.rejected, pad_token_id)
    n = len(held)
    return (SequenceScores(scores.logp_sum[:n], scores.lengths[:n]), SequenceScores(scores.logp_sum[n:], scores.lengths[n:]))


def preference_metrics(chosen: SequenceScores, rejected: SequenceScores, length_normalised: bool) -> dict[str, float]:
    """accuracy (chosen ranked above rejected), mean chosen/rejected log-probs and their margin."""
    c = chosen.logp_mean if length_normalised else chosen.logp_sum
    r = rejected.logp_mean if length_normalised else rejected.logp_sum
    return {
        "accuracy": float((c > r).float().mean()),
        "logpChosen": float(chosen.logp_sum.mean()),
        "logpRejected": float(rejected.logp_sum.mean()),
        "logpMargin": float((chosen.logp_sum - rejected.logp_sum).mean()),
    }


@torch.no_grad()
def token_kl(policy, reference, examples: list[SftExample], pad_token_id: int, batch_size: int = 64) -> float:
    """Mean over response tokens of the exact KL(pi || pi_ref) of the next-token distributions, on
    the held-out responses (teacher-forced contexts). 0 when the policy is the reference."""
    policy.eval()
    total, count = 0.0, 0
    device = next(policy.parameters()).device
    for start in range(0, len(examples), batch_size):
        input_ids, labels, attention = sft_batch(examples[start : start + batch_size], pad_token_id, device)
        logp = torch.log_softmax(policy(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float(), -1)
        logq = torch.log_softmax(reference(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float(), -1)
        per_token = (logp.exp() * (logp - logq)).sum(-1)
        mask = labels[:, 1:] != IGNORE_INDEX
        total += float(masked_mean(per_token, mask)) * int(mask.sum())
        count += int(mask.sum())
    return total / max(1, count)


def answer_accuracy(model, tokenizer, held: HeldOutPairs) -> float:
    """Greedy accuracy on the held-out prompts, taking each chosen response as the answer (the demo
    task's pairs: chosen is the correct sum)."""
    return greedy_accuracy(model, tokenizer, [{"prompt": p.prompt, "answer": p.responses[0]} for p in held.pairs])


@torch.no_grad()
def reward_pair_metrics(model, held: HeldOutPairs | None, pad_token_id: int, batch_size: int = 64) -> dict[str, float]:
    """A reward model on held-out pairs: accuracy (chosen scored above rejected) and mean margin."""
    if held is None:
        return {}
    model.eval()
    examples = held.chosen + held.rejected
    scores = torch.cat([reward_scores(model, examples[i : i + batch_size], pad_token_id) for i in range(0, len(examples), batch_size)])
    chosen, rejected = scores[: len(held)], scores[len(held) :]
    return {"accuracy": float((chosen > rejected).float().mean()), "rewardMargin": float((chosen - rejected).mean())}
