"""The one key layout every executor and workload shares (pure string functions)."""

from __future__ import annotations

import re

_CHECKPOINT_DIR = re.compile(r"^(?:round-(?P<round>\d+)/)?checkpoint-(?P<step>\d+)$")


def job_prefix(namespace: str, job: str) -> str:
    return f"{namespace}/{job}"


def stage_prefix(namespace: str, job: str, stage: str, rerun: int = 0) -> str:
    """``<namespace>/<job>/<stage>``, and ``.../rerun-<n>`` once the stage was rerun from its inputs:
    a rerun never sees (or resumes from) the checkpoints of the spec it replaces, and those stay
    where they are. The stage's first run keeps the plain prefix; ``rerun-<n>`` matches no
    checkpoint key pattern, so listing the plain prefix never picks a rerun's checkpoints."""
    base = f"{namespace}/{job}/{stage}"
    return f"{base}/rerun-{rerun}" if rerun else base


def checkpoint_key(stage_key: str, step: int, round: int | None = None) -> str:
    """``<stage_key>/[round-<n>/]checkpoint-<step>``: ``rl`` stages add the round."""
    round_part = f"round-{round}/" if round is not None else ""
    return f"{stage_key}/{round_part}checkpoint-{step}"


def parse_checkpoint_key(relative: str) -> tuple[int | None, int] | None:
    """(round, step) of a key relative to its stage prefix, or None if it is no checkpoint key."""
    match = _CHECKPOINT_DIR.match(relative.strip("/"))
    if match is None:
        return None
    round_text = match.group("round")
    return (int(round_text) if round_text is not None else None, int(match.group("step")))


def summary_key(namespace: str, job: str) -> str:
    return f"{job_prefix(namespace, job)}/summary.json"
