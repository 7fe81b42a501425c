"""ROUGE-L (Lin 2004) as Self-Instruct filters with it: tokens are the lower-cased runs of letters
and digits (``rouge_score``'s default tokenizer, without stemming); the score is the F-measure of
the longest common subsequence, ``F = 2 P R / (P + R)`` with ``P = LCS / len(candidate)`` and
``R = LCS / len(reference)``."""

from __future__ import annotations

import re

_TOKEN = re.compile(r"[a-z0-9]+")


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, one row kept)."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0
        for j, y in enumerate(b, start=1):
            diagonal, row[j] = row[j], diagonal + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(candidate: str | list[str], reference: str | list[str]) -> float:
    """ROUGE-L F-measure of two texts (or token lists); 0 when either has no token."""
    a = tokens(candidate) if isinstance(candidate, str) else candidate
    b = tokens(reference) if isinstance(reference, str) else reference
    if not a or not b:
        return 0.0
    common = lcs_length(a, b)
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(b)
    return 2 * precision * recall / (precision + recall)
