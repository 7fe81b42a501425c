"""Child names: deterministic, at most 63 characters, distinct when cut."""

import hashlib

from alignops.operator.names import child_name, fit_name, run_labels


def test_plain_run_name_is_job_stage_attempt():
    assert child_name("quickstart", "sft", 1) == "quickstart-sft-a1"
    assert child_name("quickstart", "sft", 12) == "quickstart-sft-a12"


def test_split_rounds_add_round_and_role():
    assert child_name("grpo", "rl", 3, 2, "rollout") == "grpo-rl-a3-r2-rollout"
    assert child_name("grpo", "rl", 4, 2, "train") == "grpo-rl-a4-r2-train"


def test_long_names_are_cut_to_57_plus_hash():
    job = "j" * 63
    full = f"{job}-stage-name-twenty-a7"
    name = child_name(job, "stage-name-twenty", 7)
    # 57 characters of the full name, "-", then the first 5 hex digits of sha256(full name): 63 in all
    assert name == full[:57] + "-" + hashlib.sha256(full.encode()).hexdigest()[:5]
    assert len(name) == 63


def test_a_63_character_name_is_kept_and_64_is_cut():
    assert fit_name("a" * 63) == "a" * 63
    assert len(fit_name("a" * 64)) == 63 and fit_name("a" * 64) != "a" * 63


def test_cut_names_of_different_attempts_differ():
    job = "x" * 60
    assert child_name(job, "sft", 1) != child_name(job, "sft", 2)
    assert child_name(job, "sft", 1)[:57] == child_name(job, "sft", 2)[:57]


def test_labels_name_job_stage_attempt_and_split_position():
    assert run_labels("demo", "rl", 3, 2, "train") == {
        "app.kubernetes.io/name": "alignops", "app.kubernetes.io/component": "stage",
        "app.kubernetes.io/managed-by": "alignops-operator",
        "alignops.io/job": "demo", "alignops.io/stage": "rl", "alignops.io/attempt": "3",
        "alignops.io/round": "2", "alignops.io/role": "train",
    }
    assert "alignops.io/round" not in run_labels("demo", "sft", 1)


def test_runs_across_nodes_keep_room_for_the_hostnames_of_their_pods():
    # the Job controller names index i's pod host <job>-<i>: a DNS label of at most 63 characters
    assert child_name("quickstart", "sft", 1, nodes=2) == "quickstart-sft-a1"  # short names are unchanged
    job = "j" * 63
    for nodes, limit in ((2, 61), (10, 61), (11, 60), (64, 60)):
        name = child_name(job, "sft", 1, nodes=nodes)
        assert len(name) == limit and len(f"{name}-{nodes - 1}") <= 63, (nodes, name)
        full = f"{job}-sft-a1"
        assert name == full[:limit - 6] + "-" + hashlib.sha256(full.encode()).hexdigest()[:5]
    assert child_name(job, "sft", 1, nodes=2) != child_name(job, "sft", 2, nodes=2)
