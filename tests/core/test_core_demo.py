"""The demo task: held-out prompts disjoint from every training set, formats as documented."""

from __future__ import annotations

import pytest

from alignops.demo import generate
from alignops.demo.arithmetic import extract_answer, is_correct


def test_held_out_is_disjoint_from_every_training_format_and_seed():
    held_out = {r["prompt"] for r in generate("prompts", 300, seed=0, held_out=True)}
    assert len(held_out) == 300  # at least 200, no duplicates
    for fmt in ("sft", "pairs", "rankings", "unpaired", "prompts"):
        for seed in (0, 1, 7):
            train = {r["prompt"] for r in generate(fmt, 3000, seed=seed)}
            assert not held_out & train, (fmt, seed)


def test_held_out_ignores_the_training_seed():
    assert generate("prompts", 50, seed=1, held_out=True) == generate("prompts", 50, seed=99, held_out=True)
    assert generate("sft", 50, seed=1) != generate("sft", 50, seed=2)


def test_formats():
    pair = generate("pairs", 1, seed=3)[0]
    a, b = pair["prompt"].rstrip("=").split("+")
    assert pair["chosen"] == str(int(a) + int(b)) and pair["rejected"] != pair["chosen"]
    ranking = generate("rankings", 1, seed=3)[0]
    best = ranking["responses"][ranking["ranking"][0]]
    a, b = ranking["prompt"].rstrip("=").split("+")
    assert best == str(int(a) + int(b)) and sorted(ranking["ranking"]) == [0, 1, 2, 3]
    labels = [r["label"] for r in generate("unpaired", 4, seed=3)]
    assert labels == [True, False, True, False]
    with pytest.raises(ValueError, match="known: pairs, prompts, rankings, sft, unpaired"):
        generate("chat", 1, seed=0)


def test_answer_extraction():
    assert extract_answer(" 42</s>junk") == "42"
    assert is_correct("108 and more", "108") and not is_correct("10", "108")
