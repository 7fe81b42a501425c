"""Comparison data for the reward, preference and rank stages: the three record formats, the
conversions between them, their tokenisation, and one batched forward that scores responses.

Formats (JSON lines; the record's keys decide, so a file of any of them reads the same way):
- pairs: ``{"prompt", "chosen", "rejected"}`` (+ optional ``margin`` for the Bradley-Terry loss);
- rankings: ``{"prompt", "responses": [...], "ranking": [indices, best first]}`` (+ optional
  ``scores``, one per response, higher is better: RRHF's rewards);
- unpaired: ``{"prompt", "completion", "label": true|false}`` (KTO).

Every response is tokenised as the SFT stage tokenises a completion (``bos + prompt + response +
eos``, prompt tokens masked), so the log-probabilities here are those the SFT stage trained.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignops.algos import next_token_logprobs, sequence_logprob
from alignops.workloads.data import DatasetError, SftExample, tokenize_sft
from alignops.workloads.evaluation import sft_batch


@dataclass(frozen=True)
class Comparison:
    """One prompt with K >= 2 responses ordered best first (a pair is K = 2)."""

    prompt: str
    responses: tuple[str, ...]
    scores: tuple[float, ...] | None = None  # aligned with responses, higher is better
    margin: float | None = None  # a pair's Bradley-Terry margin

    def rewards(self) -> list[float]:
        """Per-response rewards: the given scores, else K-1 for the best down to 0 for the worst."""
        k = len(self.responses)
        return list(self.scores) if self.scores is not None else [float(k - 1 - i) for i in range(k)]


@dataclass(frozen=True)
class Unpaired:
    prompt: str
    completion: str
    desirable: bool


def _record_kind(record: dict) -> str:
    if "chosen" in record and "rejected" in record:
        return "pairs"
    if "responses" in record and "ranking" in record:
        return "rankings"
    if "completion" in record and "label" in record:
        return "unpaired"
    raise DatasetError(
        "a comparison record needs prompt/chosen/rejected (pairs), prompt/responses/ranking (rankings) "
        f"or prompt/completion/label (unpaired); got keys {sorted(record)}"
    )


def _ranking(record: dict) -> Comparison:
    responses, ranking = record["responses"], record["ranking"]
    if sorted(ranking) != list(range(len(responses))) or len(responses) < 2:
        raise DatasetError(f"`ranking` must order all {len(responses)} responses (indices, best first); got {ranking}")
    scores = record.get("scores")
    if scores is not None and len(scores) != len(responses):
        raise DatasetError(f"`scores` has {len(scores)} entries for {len(responses)} responses")
    return Comparison(
        prompt=record["prompt"],
        responses=tuple(responses[i] for i in ranking),
        scores=tuple(float(scores[i]) for i in ranking) if scores is not None else None,
    )


def to_comparisons(records: list[dict]) -> list[Comparison]:
    """Pairs and rankings as comparisons (best first). Unpaired records cannot be ranked."""
    out = []
    for record in records:
        kind = _record_kind(record)
        if kind == "pairs":
            margin = record.get("margin")
            out.append(Comparison(record["prompt"], (record["chosen"], record["rejected"]),
                                  margin=float(margin) if margin is not None else None))
        elif kind == "rankings":
            out.append(_ranking(record))
        else:
            raise DatasetError("unpaired records (prompt/completion/label) have no comparison; use pairs or rankings here")
    return out


def to_pairs(comparisons: list[Comparison]) -> list[Comparison]:
    """Every (better, worse) pair of each ranking (K(K-1)/2 per prompt; ties in scores give none)."""
    out = []
    for c in comparisons:
        rewards = c.rewards()
        for i in range(len(c.responses)):
            for j in range(i + 1, len(c.responses)):
                if rewards[i] > rewards[j]:
                    out.append(Comparison(c.prompt, (c.responses[i], c.responses[j]), margin=c.margin))
    return out


def to_unpaired(records: list[dict]) -> list[Unpaired]:
    """Unpaired records as they are; a pair or ranking gives its best response as desirable and the
    others as undesirable (how TRL turns preference data into KTO data)."""
    out = []
    for record in records:
        if _record_kind(record) == "unpaired":
            label = record["label"]
            if not isinstance(label, bool):
                raise DatasetError(f"`label` must be true or false; got {label!r}")
            out.append(Unpaired(record["prompt"], record["completion"], label))
            continue
        for comparison in to_comparisons([record]):
            out.append(Unpaired(comparison.prompt, comparison.responses[0], True))
            out += [Unpaired(comparison.prompt, r, False) for r in comparison.responses[1:]]
    return out


def tokenize_response(prompt: str, response: str, tokenizer, max_length: int) -> SftExample:
    """``bos + prompt + response + eos`` with the prompt masked: the SFT stage's tokenisation."""
    return tokenize_sft({"prompt": prompt, "completion": response}, tokenizer, max_length)


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
    instead of two, and the same padding width for both."""
    device = next(model.parameters()).device
    input_ids, labels, attention = sft_batch(examples, pad_token_id, device)
    logits = model(input_ids=input_ids, attention_mask=attention).logits
    token_logps, mask = next_token_logprobs(logits, labels)
    return SequenceScores(sequence_logprob(token_logps, mask, "sum"), mask.sum(-1))


@torch.no_grad()
def sequence_logps_batched(model, examples: list[SftExample], pad_token_id: int, batch_size: int = 64) -> SequenceScores:
    """``sequence_logps`` without gradients, over any number of sequences in chunks."""
    model.eval()
    parts = [sequence_logps(model, examples[i : i + batch_size], pad_token_id) for i in range(0, len(examples), batch_size)]
    return SequenceScores(torch.cat([p.logp_sum for p in parts]), torch.cat([p.lengths for p in parts]))
