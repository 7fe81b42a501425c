"""The command line's contract with a person and a script: exit codes in `--help` and the README,
manifests refused as the API server would refuse them, the end-of-run table at 80 columns, and
`--set` wildcards over stages of different types."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from alignops.api.status import JobStatus, StageStatus
from alignops.api.validation import InvalidManifest, parse_job
from alignops.cli.codes import RUN_EXIT_CODES, VALIDATE_EXIT_CODES
from alignops.cli.overrides import apply_overrides
from alignops.cli.progress import summary_table
from core.manifests import sft_job
from suite import REPO, run_cli


def test_exit_codes_are_in_help_and_in_the_readme():
    shown = " ".join(run_cli("--help", columns=100).stdout.replace("│", " ").split())
    for command, codes in (("validate", VALIDATE_EXIT_CODES), ("run", RUN_EXIT_CODES)):
        assert f"Exit codes of {command}:" in shown
        for code, text in codes.items():
            assert f"{code}: {text}" in shown
    readme = (REPO / "README.md").read_text()
    for code, text in RUN_EXIT_CODES.items():
        assert f"| {code} | {text} |" in readme


def test_an_invalid_manifest_exits_1_from_validate_and_from_run(tmp_path):
    doc = sft_job()
    doc["spec"]["stages"][0]["hyperparameters"]["learningRat"] = 0.1
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(doc))
    for command in (["validate"], ["run", "--workdir", str(tmp_path / "w")]):
        done = run_cli(command[0], str(path), *command[1:])
        assert done.returncode == 1, done.stdout + done.stderr
        assert "spec.stages[0].hyperparameters.learningRat: unknown field" in done.stderr
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("metadata, path, words", [
    ({"labels": {"team": "x" * 64}}, "metadata.labels['team']", "at most 63 characters (this one has 64)"),
    ({"labels": {"team": "-ml-"}}, "metadata.labels['team']", "starting and ending with a letter or digit"),
    ({"labels": {"Example.com/team": "ml"}}, "metadata.labels['Example.com/team']", "must be a DNS subdomain"),
    ({"labels": {"a" * 64: "ml"}}, f"metadata.labels['{'a' * 64}']", "the key's name must be at most 63"),
    ({"annotations": {"notes": "x" * 262_140}}, "metadata.annotations", "at most 262144 (256 KiB) in all"),
    ({"namespace": "ML_team"}, "metadata.namespace", "must be a DNS-1123 label"),
    ({"name": "d" * 64}, "metadata.name", "at most 63 characters"),
])
def test_validate_applies_the_api_servers_metadata_limits(metadata, path, words):
    doc = sft_job()
    doc["metadata"].update(metadata)
    with pytest.raises(InvalidManifest) as refused:
        parse_job(doc)
    assert any(e.path == path and words in e.message for e in refused.value.errors), refused.value.errors


def test_validate_accepts_what_the_api_server_accepts():
    doc = sft_job()
    doc["metadata"].update(namespace="ml-team", labels={"kueue.x-k8s.io/queue-name": "team-a", "empty": "", "v": "1.2_x"},
                           annotations={"alignops.io/retry": "1"})
    assert parse_job(doc).metadata.labels["empty"] == ""


def test_the_summary_table_reads_at_80_columns_without_a_cut_word():
    status = JobStatus(phase="Succeeded", stages=[
        StageStatus(name="reward-model-stage-x", phase="Succeeded", attempts=12, start_time="2026-01-01T00:00:00Z",
                    completion_time="2026-01-01T01:05:00Z",
                    metrics={"loss": 0.123456, "accuracyBefore": 0.5, "accuracyAfter": 0.875, "droppedExamples": 3.0}),
        StageStatus(name="rl", phase="Failed", attempts=3,
                    metrics={"rewardFirst": -0.25, "rewardLast": 0.75, "accuracyBefore": 0.1, "accuracyAfter": 0.2}),
    ])
    out = io.StringIO()
    Console(file=out, width=80, color_system=None).print(summary_table(status, "demo: Succeeded"))
    text = out.getvalue()
    assert "…" not in text and max(len(line.rstrip()) for line in text.splitlines()) <= 80
    flat = " ".join(text.split())
    for words in ("reward-model-stage-x", "Succeeded", "65 min", "loss 0.123", "accuracy 0.500 -> 0.875", "dropped 3",
                  "reward -0.250 -> 0.750", "accuracy 0.100 -> 0.200"):
        assert words in flat, words


def test_a_stages_wildcard_sets_every_stage_whose_type_has_the_field_and_names_the_others():
    doc = sft_job()
    doc["spec"]["stages"].append({"name": "rl", "type": "rl", "policy": {"fromStage": "sft"}})
    doc["spec"]["stages"].append({"name": "dpo", "type": "preference", "policy": {"fromStage": "sft"}})
    out, notes = apply_overrides(doc, ["stages.*.hyperparameters.maxSteps=10", "stages.*.hyperparameters.kl.beta=0.2"])
    assert [s.get("hyperparameters", {}).get("maxSteps") for s in out["spec"]["stages"]] == [10, None, 10]
    assert out["spec"]["stages"][1]["hyperparameters"]["kl"] == {"beta": 0.2}
    assert notes == ["--set stages.*.hyperparameters.maxSteps: skipped rl (rl): no hyperparameters.maxSteps in that type",
                     "--set stages.*.hyperparameters.kl.beta: skipped sft (sft), dpo (preference): no hyperparameters.kl.beta in that type"]
    parse_job(out)  # what it set is valid
    with pytest.raises(ValueError, match=r"no stage's type has hyperparameters.nope \(stage types: preference, rl, sft\)"):
        apply_overrides(doc, ["stages.*.hyperparameters.nope=1"])
    assert doc["spec"]["stages"][0]["hyperparameters"]["maxSteps"] == 4  # the input is not changed
