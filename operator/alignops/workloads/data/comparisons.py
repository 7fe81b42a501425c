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

from alignops.workloads.data.records import DatasetError


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
