"""Configuration errors of the comparison stages fail at once (exit 78) and say what would work."""

import pytest

from alignops.contract import EXIT_CONFIG

DATA = {"train": {"generator": "arithmetic", "size": 16, "seed": 1}}


@pytest.mark.parametrize("stage, algorithm, known", [
    ({"name": "p", "type": "preference"}, "dpo2", "known: cdpo, dpo, ipo, kto, orpo, simpo"),
    ({"name": "r", "type": "reward"}, "bt", "known: bradley_terry, plackett_luce"),
    ({"name": "k", "type": "rank"}, "listwise", "known: rrhf"),
])
def test_unknown_loss_name_lists_the_known_ones(stage_run, tmp_path, stage, algorithm, known):
    # the API refuses these names; a hand-written or stale stage config reaches the workload anyway
    code, result = stage_run({**stage, "datasets": DATA, "hyperparameters": {"evalSize": 8}}, tmp_path / "store",
                             algorithm=algorithm)
    assert code == EXIT_CONFIG
    assert repr(algorithm) in result["message"] and known in result["message"]


def test_dpo_with_label_smoothing_points_to_cdpo(stage_run, tmp_path):
    stage = {"name": "p", "type": "preference", "algorithm": "dpo", "datasets": DATA,
             "hyperparameters": {"labelSmoothing": 0.1, "evalSize": 8}}
    code, result = stage_run(stage, tmp_path / "store")
    assert code == EXIT_CONFIG
    assert "use preference loss 'cdpo'" in result["message"]


def test_unpaired_records_cannot_train_dpo(stage_run, tmp_path):
    data = {"train": {"generator": "arithmetic", "size": 16, "seed": 1, "format": "unpaired"}}
    code, result = stage_run({"name": "p", "type": "preference", "datasets": data, "hyperparameters": {"evalSize": 8}},
                             tmp_path / "store")
    assert code == EXIT_CONFIG
    assert "unpaired records" in result["message"]
