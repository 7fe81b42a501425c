"""A round's rollouts in storage: ``<stage_key>/round-<n>/rollouts.jsonl`` (one JSON object per
sampled response) and ``round-<n>/rollout_stats.json`` (the round's generation and reward figures),
written in that order. The stats object is the commit marker: rollouts without it are an
interrupted upload, never read, and written again.

In placement ``split`` this is how a round's `rollout` run hands its samples to the `train` run; in
``colocated`` it makes a rerun that was killed during training reuse the round's samples, and keeps
every round's samples for inspection (``alignops`` never deletes them; checkpoints follow
``keepCheckpoints``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from alignops.storage.base import ObjectNotFound, ObjectStore, join_key

ROLLOUTS = "rollouts.jsonl"
STATS = "rollout_stats.json"


@dataclass
class Rollout:
    """One sampled response to the prompt of group ``group`` (the round's prompt index)."""

    group: int
    prompt: str
    answer: str | None
    prompt_ids: list[int]
    response_ids: list[int]
    response: str
    finish_reason: str
    engine_logprobs: list[float] | None = None
    rewards: dict[str, float] = field(default_factory=dict)  # unweighted, per reward function
    score: float = 0.0  # the weighted sum R(x, y)
    baseline_score: float | None = None  # remax: R of the greedy response to the same prompt


@dataclass
class RoundRollouts:
    round: int
    rollouts: list[Rollout]
    stats: dict[str, float]


def round_key(stage_key: str, round_: int) -> str:
    return join_key(stage_key, f"round-{round_}")


def save_rollouts(store: ObjectStore, stage_key: str, batch: RoundRollouts) -> None:
    base = round_key(stage_key, batch.round)
    lines = "".join(json.dumps(asdict(r), separators=(",", ":")) + "\n" for r in batch.rollouts)
    store.delete_prefix(join_key(base, STATS))  # a rewrite is uncommitted until its stats land again
    store.put_bytes(join_key(base, ROLLOUTS), lines.encode())
    store.put_bytes(join_key(base, STATS), json.dumps({"round": batch.round, "count": len(batch.rollouts), **batch.stats}).encode())


def load_rollouts(store: ObjectStore, stage_key: str, round_: int) -> RoundRollouts | None:
    """The committed rollouts of a round, or None if the round has none (yet)."""
    base = round_key(stage_key, round_)
    try:
        stats = json.loads(store.get_bytes(join_key(base, STATS)))
        text = store.get_bytes(join_key(base, ROLLOUTS)).decode()
    except ObjectNotFound:
        return None
    rollouts = [Rollout(**json.loads(line)) for line in text.splitlines() if line.strip()]
    if len(rollouts) != stats.get("count"):
        return None  # stats of an earlier write beside a torn file: regenerate
    stats = {k: v for k, v in stats.items() if k not in ("round", "count")}
    return RoundRollouts(round_, rollouts, stats)
