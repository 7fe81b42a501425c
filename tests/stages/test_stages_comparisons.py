"""Comparison data: the three record formats, their conversions, and the errors for bad records."""

import pytest

from alignops.workloads.data.comparisons import Comparison, to_comparisons, to_pairs, to_unpaired
from alignops.workloads.data.records import DatasetError


def test_pairs_and_rankings_become_best_first_comparisons():
    records = [
        {"prompt": "1+1=", "chosen": "2", "rejected": "3", "margin": 0.5},
        # ranking lists indices best first: responses[2]="5" is best, then "6", then "9"
        {"prompt": "2+3=", "responses": ["9", "6", "5"], "ranking": [2, 1, 0], "scores": [0.0, 1.0, 3.0]},
    ]
    pair, ranking = to_comparisons(records)
    assert pair == Comparison("1+1=", ("2", "3"), margin=0.5)
    assert ranking.responses == ("5", "6", "9")
    assert ranking.scores == (3.0, 1.0, 0.0)  # reordered with the responses


def test_rewards_default_to_rank_positions():
    # K = 3 without scores: best gets K-1 = 2, then 1, then 0
    assert Comparison("p", ("a", "b", "c")).rewards() == [2.0, 1.0, 0.0]


def test_a_ranking_counts_as_all_its_pairs():
    ranking = Comparison("p", ("a", "b", "c"))
    # K(K-1)/2 = 3 pairs, better first: (a,b), (a,c), (b,c)
    assert [c.responses for c in to_pairs([ranking])] == [("a", "b"), ("a", "c"), ("b", "c")]
    # tied scores give no pair: a and b tie at 1.0, both beat c
    tied = Comparison("p", ("a", "b", "c"), scores=(1.0, 1.0, 0.0))
    assert [c.responses for c in to_pairs([tied])] == [("a", "c"), ("b", "c")]


def test_unpaired_from_kto_records_and_from_pairs():
    records = [
        {"prompt": "1+1=", "completion": "2", "label": True},
        {"prompt": "1+2=", "chosen": "3", "rejected": "4"},
    ]
    out = to_unpaired(records)
    # a pair gives its chosen as desirable and its rejected as undesirable (TRL's conversion)
    assert [(u.prompt, u.completion, u.desirable) for u in out] == [
        ("1+1=", "2", True), ("1+2=", "3", True), ("1+2=", "4", False)]


@pytest.mark.parametrize("record, message", [
    ({"prompt": "x", "answer": "1"}, "prompt/chosen/rejected"),
    ({"prompt": "x", "responses": ["a", "b"], "ranking": [0, 0]}, "must order all 2 responses"),
    ({"prompt": "x", "responses": ["a", "b"], "ranking": [0, 1], "scores": [1.0]}, "`scores` has 1 entries"),
])
def test_bad_records_name_the_problem(record, message):
    with pytest.raises(DatasetError, match=message):
        to_comparisons([record])


def test_unpaired_labels_must_be_booleans():
    with pytest.raises(DatasetError, match="true or false"):
        to_unpaired([{"prompt": "x", "completion": "1", "label": "yes"}])
    with pytest.raises(DatasetError, match="no comparison"):
        to_comparisons([{"prompt": "x", "completion": "1", "label": True}])
