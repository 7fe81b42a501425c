"""Bad input fails at once (exit 78), naming the place (FILE:LINE and the field) and the fix, and
nothing already committed is touched: datasets with wrong records, non-UTF-8 files, data with
nothing to learn, input checkpoints that do not exist or are corrupt, credentials in an endpoint."""

from __future__ import annotations

import json

import pytest

from alignops.api.validation import InvalidManifest, parse_job
from alignops.contract import EXIT_CONFIG
from alignops.storage import latest_checkpoint, open_store
from stages.conftest import tiny_job

pytestmark = pytest.mark.slow


def _sft(uri: str, **hyper) -> dict:
    return {"name": "sft", "type": "sft", "datasets": {"train": {"uri": uri}},
            "hyperparameters": {"maxSteps": 2, "batchSize": 2, "evalSize": 4, **hyper}}


def _write(path, lines) -> str:
    path.write_bytes(b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines))
    return f"file://{path}"


GOOD = {"prompt": "1+2=", "completion": "3"}


@pytest.mark.parametrize("bad, place, field", [
    ({"completion": "3"}, ":3", "`messages` or `prompt` and `completion`"),  # no prompt: names the keys it needs
    ({"prompt": 12, "completion": "3"}, ":3", "field `prompt` must be a string, got int"),
    ({"messages": [{"role": "user", "content": ["x"]}, {"role": "assistant", "content": "3"}]}, ":3",
     "field `messages[].content` must be a string"),
])
def test_a_bad_record_names_its_file_line_and_field(stage_run, tmp_path, bad, place, field):
    uri = _write(tmp_path / "train.jsonl", [GOOD, GOOD, bad, GOOD])
    code, result = stage_run(_sft(uri), tmp_path / "store")
    assert code == EXIT_CONFIG
    assert f"{tmp_path / 'train.jsonl'}{place}:" in result["message"] and field in result["message"]


def test_a_dataset_that_is_not_utf8_names_its_line(stage_run, tmp_path):
    uri = _write(tmp_path / "train.jsonl", [GOOD, b'{"prompt": "caf\xe9", "completion": "3"}'])
    code, result = stage_run(_sft(uri), tmp_path / "store")
    assert code == EXIT_CONFIG
    assert f"{tmp_path / 'train.jsonl'}:2: not UTF-8 (byte 0xe9)" in result["message"]


def test_a_comparison_record_names_its_place(stage_run, tmp_path):
    uri = _write(tmp_path / "pairs.jsonl", [{"prompt": "1+2=", "chosen": "3", "rejected": "4"},
                                            {"prompt": "1+2=", "chosen": 3, "rejected": "4"}])
    stage = {"name": "rm", "type": "reward", "datasets": {"train": {"uri": uri}}, "hyperparameters": {"maxSteps": 1}}
    code, result = stage_run(stage, tmp_path / "store")
    assert code == EXIT_CONFIG
    assert f"pairs.jsonl:2: field `chosen` must be a string" in result["message"]


def test_prompts_longer_than_max_length_are_an_error_not_loss_zero(stage_run, tmp_path):
    long = {"prompt": "1+2+3+4+5+6+7+8+9=", "completion": "45"}
    uri = _write(tmp_path / "train.jsonl", [long] * 4)
    code, result = stage_run(_sft(uri, maxLength=8), tmp_path / "store")
    assert code == EXIT_CONFIG
    assert "no example has a response token within maxLength 8" in result["message"]
    assert "raise hyperparameters.maxLength" in result["message"]
    assert latest_checkpoint(open_store(f"file://{tmp_path / 'store'}"), "default/tiny/sft") is None


def test_every_completion_empty_is_an_error(stage_run, tmp_path):
    uri = _write(tmp_path / "train.jsonl", [{"prompt": "1+2=", "completion": ""}] * 4)
    code, result = stage_run(_sft(uri), tmp_path / "store")
    assert code == EXIT_CONFIG and "every completion is empty" in result["message"]


def test_some_prompts_too_long_are_skipped_and_counted(stage_run, tmp_path, capfd):
    long = {"prompt": "1+2+3+4+5+6+7+8+9=", "completion": "45"}
    uri = _write(tmp_path / "train.jsonl", [GOOD, GOOD, long, GOOD])
    code, result = stage_run(_sft(uri, maxLength=10), tmp_path / "store")
    assert code == 0
    assert result["metrics"]["droppedExamples"] == 1.0
    assert "1 of 4 examples have no response token within maxLength 10" in capfd.readouterr().err


def test_an_input_checkpoint_that_does_not_exist_fails_at_once(stage_run, tmp_path):
    data = _write(tmp_path / "train.jsonl", [GOOD] * 4)
    stage = {**_sft(data), "policy": {"uri": f"file://{tmp_path}/nowhere/checkpoint-3"}}
    code, result = stage_run(stage, tmp_path / "store")
    assert code == EXIT_CONFIG
    assert "nowhere/checkpoint-3 is not a committed checkpoint" in result["message"]


def test_a_corrupt_input_checkpoint_fails_at_once_and_stays_as_it_was(stage_run, tmp_path):
    data = _write(tmp_path / "train.jsonl", [GOOD] * 4)
    code, first = stage_run(_sft(data), tmp_path / "first")
    assert code == 0
    directory = type(tmp_path)(first["checkpointUri"].removeprefix("file://"))
    weights = directory / "model.safetensors"
    damaged = weights.read_bytes()[:-8] + b"\0" * 8
    weights.write_bytes(damaged)
    code, result = stage_run({**_sft(data), "policy": {"uri": first["checkpointUri"]}}, tmp_path / "second")
    assert code == EXIT_CONFIG
    assert "corrupt checkpoint" in result["message"] and "model.safetensors" in result["message"]
    assert weights.read_bytes() == damaged  # read, never rewritten


def test_credentials_in_the_endpoint_are_refused_and_not_echoed():
    job = tiny_job(_sft("s3://bucket/train.jsonl"))
    job["spec"]["storage"] = {"uri": "s3://bucket/runs", "endpoint": "https://ak:s3cr3t@minio.local:9000"}
    with pytest.raises(InvalidManifest) as failed:
        parse_job(job)
    text = str(failed.value)
    assert "spec.storage.endpoint" in text and "storage.secretName" in text
    assert "s3cr3t" not in text
    job["spec"]["storage"]["endpoint"] = "https://minio.local:9000"
    assert parse_job(job).spec.storage.endpoint == "https://minio.local:9000"


def test_validate_refuses_a_manifest_over_the_api_servers_object_limit(tmp_path):
    from suite import run_cli

    job = tiny_job(_sft("s3://bucket/train.jsonl"))
    job["metadata"]["annotations"] = {"notes": "x" * 1_600_000}
    path = tmp_path / "big.yaml"
    path.write_text(json.dumps(job))
    done = run_cli("validate", str(path))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1.5 MiB" in done.stdout + done.stderr


def test_a_manifest_that_is_not_utf8_is_unreadable_exit_2(tmp_path):
    from suite import run_cli

    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"apiVersion: alignops.io/v1alpha1\nkind: AlignmentJob\nmetadata: {name: caf\xe9}\n")
    for command in ("validate", "run"):
        done = run_cli(command, str(path), *(["--workdir", str(tmp_path / "w")] if command == "run" else []))
        assert done.returncode == 2, (command, done.stdout + done.stderr)
        assert "latin1.yaml:3: not UTF-8 text (byte 0xe9)" in done.stdout + done.stderr
        assert "Traceback" not in done.stderr


# -- nothing to learn, every stage type -------------------------------------------------------------

def _pairs(tmp_path, records) -> str:
    return _write(tmp_path / "pairs.jsonl", records)


@pytest.mark.parametrize("stage_type, algorithm", [("preference", "dpo"), ("reward", None), ("rank", None)])
def test_comparisons_whose_responses_do_not_differ_are_an_error_not_loss_constant(stage_run, tmp_path, stage_type, algorithm):
    # identical responses, and responses that only differ after maxLength: equal scores, zero gradient
    long = "1+2+3+4+5+6+7+8+9="
    records = [{"prompt": "1+2=", "chosen": "3", "rejected": "3"}, {"prompt": long, "chosen": "45", "rejected": "44"}] * 2
    if stage_type == "rank":
        records = [{"prompt": r["prompt"], "responses": [r["chosen"], r["rejected"]], "ranking": [0, 1]} for r in records]
    stage = {"name": "s", "type": stage_type, "datasets": {"train": {"uri": _pairs(tmp_path, records)}},
             "hyperparameters": {"maxSteps": 1, "maxLength": 8, "evalSize": 2}}
    if algorithm:
        stage["algorithm"] = algorithm
    code, result = stage_run(stage, tmp_path / "store")
    assert code == EXIT_CONFIG
    assert f"{tmp_path / 'pairs.jsonl'}: nothing to learn" in result["message"]
    assert "responses are equal once cut to maxLength 8" in result["message"]
    assert "raise hyperparameters.maxLength" in result["message"]
    assert latest_checkpoint(open_store(f"file://{tmp_path / 'store'}"), "default/tiny/s") is None


def test_some_comparisons_without_a_difference_are_skipped_and_counted(stage_run, tmp_path, capfd):
    records = [{"prompt": "1+2=", "chosen": "3", "rejected": "4"}] * 3 + [{"prompt": "1+2=", "chosen": "3", "rejected": "3"}]
    stage = {"name": "dpo", "type": "preference", "datasets": {"train": {"uri": _pairs(tmp_path, records)}},
             "hyperparameters": {"maxSteps": 1, "batchSize": 2, "evalSize": 2}}
    code, result = stage_run(stage, tmp_path / "store")
    assert code == 0, result
    assert result["metrics"]["droppedExamples"] == 1.0
    assert "1 of 4 items have no response token, or responses that differ, within maxLength 64" in capfd.readouterr().err


def test_kto_with_every_completion_empty_is_an_error(stage_run, tmp_path):
    uri = _write(tmp_path / "unpaired.jsonl", [{"prompt": "1+2=", "completion": "", "label": k % 2 == 0} for k in range(4)])
    stage = {"name": "kto", "type": "preference", "algorithm": "kto", "datasets": {"train": {"uri": uri, "format": "unpaired"}},
             "hyperparameters": {"maxSteps": 1, "evalSize": 2}}
    code, result = stage_run(stage, tmp_path / "store")
    assert code == EXIT_CONFIG and "unpaired.jsonl: every completion is empty" in result["message"]


def test_rl_prompts_without_the_answer_a_verifier_needs_name_the_line_before_any_sampling(stage_run, tmp_path):
    uri = _write(tmp_path / "prompts.jsonl", [{"prompt": "1+2=", "answer": "3"}, {"prompt": "2+2="}])
    stage = {"name": "rl", "type": "rl", "datasets": {"train": {"uri": uri}},
             "hyperparameters": {"rounds": 1, "promptsPerRound": 2, "samplesPerPrompt": 2, "maxNewTokens": 4, "evalSize": 2}}
    code, result = stage_run(stage, tmp_path / "store")
    assert code == EXIT_CONFIG
    assert f"{tmp_path / 'prompts.jsonl'}:2: field `answer` is missing: the verifier rewards (exact_answer" in result["message"]


def test_an_empty_dataset_is_an_error(stage_run, tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    code, result = stage_run(_sft(f"file://{tmp_path / 'empty.jsonl'}"), tmp_path / "store")
    assert code == EXIT_CONFIG and f"file://{tmp_path / 'empty.jsonl'} has no records" in result["message"]


def test_a_corrupt_checkpoint_of_the_stage_itself_fails_at_once_naming_it(stage_run, tmp_path):
    data = _write(tmp_path / "train.jsonl", [GOOD] * 4)
    code, first = stage_run(_sft(data), tmp_path / "store")
    assert code == 0
    weights = type(tmp_path)(first["checkpointUri"].removeprefix("file://")) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0" * 4)
    code, result = stage_run(_sft(data, maxSteps=4), tmp_path / "store")  # resumes from the damaged one
    assert code == EXIT_CONFIG
    assert f"corrupt checkpoint: {first['checkpointUri']}/model.safetensors: content differs from its manifest" in result["message"]
    assert "delete it to resume from the checkpoint before it" in result["message"]
