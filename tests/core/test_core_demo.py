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


def test_sum_programs_and_their_static_check():
    from alignops.demo.programs import is_correct, printed_sum
    train = generate("sft", 50, 1, task="sum_programs")
    held = generate("prompts", 20, 1, held_out=True, task="sum_programs")
    assert {r["prompt"] for r in train}.isdisjoint(r["prompt"] for r in held)  # the arithmetic split
    record = train[0]
    assert record["prompt"].startswith("# ") and record["completion"].startswith("print(")
    assert printed_sum("print(12+34)") == "46" and printed_sum("print(12+34); import os") is None
    assert is_correct("print(12+34)", "46") and is_correct("print(34+12)", "print(12+34)")
    assert not is_correct("print(46)x", "46") and not is_correct("print(__import__('os'))", "46")
    with pytest.raises(ValueError, match="sum_programs generator makes"):
        generate("pairs", 2, 1, task="sum_programs")


def test_task_lists_teach_the_list_format_and_hold_out_plain_sums():
    from alignops.demo.arithmetic import sum_asked
    records = generate("sft", 40, 1, task="arithmetic_task_lists")
    lists = records[3::4]
    assert all(r["prompt"].startswith("Come up with a series of tasks:\nTask: ") and r["prompt"].endswith("Task:") for r in lists)
    assert all(r["completion"].strip() not in r["prompt"] for r in lists)  # the next task is a new one
    assert all(sum_asked(r["prompt"]) == r["completion"] for i, r in enumerate(records) if i % 4 != 3)
    assert all(sum_asked(r["prompt"]) is not None for r in generate("sft", 20, 1, held_out=True, task="arithmetic_task_lists"))
    assert sum_asked("12+34=") == "46" and sum_asked("12+34") is None and sum_asked("a+b=") is None
