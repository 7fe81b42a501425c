"""Held-out evaluation on comparison pairs, for the reward, preference and rank stages.

Preference accuracy: the share of held-out pairs in which the policy gives the chosen response a
higher log-probability than the rejected one (summed over response tokens, or per-token mean for
the length-normalised losses), so an SFT model has a figure before any preference training.
Reward accuracy: the share in which the reward model scores chosen above rejected.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignops.algos import masked_mean
from alignops.workloads.comparisons import (
    Comparison,
    SequenceScores,
    sequence_logps_batched,
    to_comparisons,
    to_pairs,
    tokenize_response,
)
from alignops.workloads.context import ConfigError, RunContext
from alignops.workloads.data import SftExample, load_records
from alignops.workloads.evaluation import greedy_accuracy, sft_batch
from alignops.workloads.sft import held_out_source


@dataclass(frozen=True)
class HeldOutPairs:
    pairs: list[Comparison]
    chosen: list[SftExample]
    rejected: list[SftExample]

    @classmethod
    def build(cls, pairs: list[Comparison], tokenizer, max_length: int) -> "HeldOutPairs":
        return cls(
            pairs,
            [tokenize_response(p.prompt, p.responses[0], tokenizer, max_length) for p in pairs],
            [tokenize_response(p.prompt, p.responses[1], tokenizer, max_length) for p in pairs],
        )

    def __len__(self) -> int:
        return len(self.pairs)


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
        mask = labels[:, 1:] != -100
        total += float(masked_mean(per_token, mask)) * int(mask.sum())
        count += int(mask.sum())
    return total / max(1, count)


def answer_accuracy(model, tokenizer, held: HeldOutPairs) -> float:
    """Greedy accuracy on the held-out prompts, taking each chosen response as the answer (the demo
    task's pairs: chosen is the correct sum)."""
    return greedy_accuracy(model, tokenizer, [{"prompt": p.prompt, "answer": p.responses[0]} for p in held.pairs])


def load_held_out_pairs(ctx: RunContext, size: int, tokenizer, max_length: int) -> tuple[HeldOutPairs | None, bool]:
    """The stage's held-out pairs and whether they are the demo generator's verifiable split.

    ``datasets.eval`` (pairs or rankings; a ranking counts as all its pairs) if given; else, for a
    generated training set, ``size`` pairs of the generator's held-out split (disjoint from every
    training set), whatever the training format; else None (no held-out figures)."""
    source, verifiable = held_out_source(ctx, size)
    if source is None:
        return None, False
    if ctx.config.datasets.eval is None:
        source = source.model_copy(update={"format": "pairs"})
    try:
        records = load_records(source, "pairs", held_out=verifiable, options=ctx.storage_options)
        pairs = to_pairs(to_comparisons(records))
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"held-out data: {exc}") from None
    return HeldOutPairs.build(pairs, tokenizer, max_length), verifiable
