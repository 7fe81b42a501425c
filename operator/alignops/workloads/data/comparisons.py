"""Comparison data for the reward, preference and rank stages: the three record formats, the
conversions between them.

Formats (JSON lines; the record's keys decide, so a file of any of them reads the same way):
- pairs: ``{"prompt", "chosen", "rejected"}`` (+ optional ``margin`` for the Bradley-Terry loss);
- rankings: ``{"prompt", "responses": [...], "ranking": [indices, best first]}`` (+ optional
  ``scores``, one per response, higher is better: RRHF's rewards);
- unpaired: ``{"prompt", "completion", "label": true|false}`` (KTO).

Every response is tokenised as the SFT stage tokenises a completion
(``alignops.workloads.data.sft.tokenize_response``), so the log-probabilities the stages compare
are those the SFT stage trained.
"""

from __future__ import annotations

from dataclasses import dataclass

from typing import Callable, TypeVar

from alignops.workloads.data.records import DatasetError, Records
from alignops.workloads.data.sft import text_field

T = TypeVar("T")


def _each(records: list[dict], fn: Callable[[dict], T]) -> list[T]:
    """``fn`` per record; with ``Records`` an error names the record's file and line."""
    return records.each(fn) if isinstance(records, Records) else [fn(r) for r in records]


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
    if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
        raise DatasetError("field `responses` must be a list of strings")
    if not isinstance(ranking, list) or sorted(ranking) != list(range(len(responses))) or len(responses) < 2:
        raise DatasetError(f"field `ranking` must order all {len(responses)} responses (indices, best first); got {ranking}")
    scores = record.get("scores")
    if scores is not None and len(scores) != len(responses):
        raise DatasetError(f"field `scores` has {len(scores)} entries for {len(responses)} responses")
    return Comparison(
        prompt=text_field(record, "prompt"),
        responses=tuple(responses[i] for i in ranking),
        scores=tuple(float(scores[i]) for i in ranking) if scores is not None else None,
    )


def _comparison(record: dict) -> Comparison:
    kind = _record_kind(record)
    if kind == "pairs":
        margin = record.get("margin")
        return Comparison(text_field(record, "prompt"), (text_field(record, "chosen"), text_field(record, "rejected")),
                          margin=float(margin) if margin is not None else None)
    if kind == "rankings":
        return _ranking(record)
    raise DatasetError("unpaired records (prompt/completion/label) have no comparison; use pairs or rankings here")


def to_comparisons(records: list[dict]) -> list[Comparison]:
    """Pairs and rankings as comparisons (best first). Unpaired records cannot be ranked."""
    return _each(records, _comparison)


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


def _unpaired(record: dict) -> list[Unpaired]:
    if _record_kind(record) == "unpaired":
        label = record["label"]
        if not isinstance(label, bool):
            raise DatasetError(f"field `label` must be true or false; got {label!r}")
        return [Unpaired(text_field(record, "prompt"), text_field(record, "completion"), label)]
    comparison = _comparison(record)
    return ([Unpaired(comparison.prompt, comparison.responses[0], True)]
            + [Unpaired(comparison.prompt, r, False) for r in comparison.responses[1:]])


def to_unpaired(records: list[dict]) -> list[Unpaired]:
    """Unpaired records as they are; a pair or ranking gives its best response as desirable and the
    others as undesirable (how TRL turns preference data into KTO data)."""
    return [u for group in _each(records, _unpaired) for u in group]
