"""Stages on real data files: multi-turn ``messages`` JSON lines -> sft -> conversational Parquet
pairs with an implicit prompt -> dpo; KTO on a CSV of labelled completions; a reward model on JSON
rankings; packed SFT; examples too long for maxLength dropped and counted in every stage; and the
tokenised data kept between attempts (a retry does not tokenise again)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from alignops.contract import EXIT_OK

pytestmark = pytest.mark.slow

HYPER = {"maxSteps": 6, "batchSize": 4, "evalSize": 8, "learningRate": 0.01, "warmupSteps": 0, "logEvery": 1}


def _conversation(i: int) -> list[dict]:
    return [{"role": "user", "content": f"{i}+1?"}, {"role": "assistant", "content": str(i + 1)},
            {"role": "user", "content": "and +2?"}, {"role": "assistant", "content": str(i + 3)}]


def test_messages_sft_then_conversational_parquet_pairs_dpo(stage_run, tmp_path):
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"messages": _conversation(i)}) + "\n" for i in range(60)))
    sft = {"name": "sft", "type": "sft", "datasets": {"train": {"uri": f"file://{chat}"}}, "hyperparameters": HYPER}
    code, first = stage_run(sft, tmp_path / "store")
    assert code == EXIT_OK, first
    metrics = first["metrics"]
    assert metrics["loss"] < metrics["lossFirst"] and "evalLossBefore" in metrics  # held out: 6 of the 60
    pairs = [{"chosen": _conversation(i)[:3] + [{"role": "assistant", "content": str(i + 3)}],
              "rejected": _conversation(i)[:3] + [{"role": "assistant", "content": str(i + 4)}]} for i in range(60)]
    pq.write_table(pa.Table.from_pylist(pairs), tmp_path / "pairs.parquet")
    dpo = {"name": "dpo", "type": "preference", "algorithm": "dpo", "policy": {"uri": first["checkpointUri"]},
           "datasets": {"train": {"uri": f"file://{tmp_path / 'pairs.parquet'}"}}, "hyperparameters": HYPER}
    code, second = stage_run(dpo, tmp_path / "store")
    assert code == EXIT_OK, second
    metrics = second["metrics"]
    assert "accuracyBefore" in metrics and metrics["klAfter"] > 0  # held-out pairs carved; the policy moved


def test_kto_on_a_csv_and_a_reward_model_on_json_rankings(stage_run, tmp_path):
    rows = [{"prompt": f"{i}+1=", "completion": str(i + 1 + (i % 2)), "label": "true" if i % 2 == 0 else "false"}
            for i in range(40)]
    pcsv.write_csv(pa.Table.from_pylist(rows), tmp_path / "kto.csv")
    kto = {"name": "kto", "type": "preference", "algorithm": "kto",
           "datasets": {"train": {"uri": f"file://{tmp_path / 'kto.csv'}"}}, "hyperparameters": HYPER}
    code, result = stage_run(kto, tmp_path / "store")
    assert code == EXIT_OK, result
    assert "accuracyBefore" not in result["metrics"]  # unpaired data: no held-out pairs, nothing carved
    rankings = [{"prompt": f"{i}+2=", "responses": [str(i + 9), str(i + 2), str(i + 3)], "ranking": [1, 2, 0]}
                for i in range(40)]
    (tmp_path / "ranks.json").write_text(json.dumps(rankings))
    rm = {"name": "rm", "type": "reward", "datasets": {"train": {"uri": f"file://{tmp_path / 'ranks.json'}"}},
          "hyperparameters": HYPER}
    code, result = stage_run(rm, tmp_path / "store")
    assert code == EXIT_OK, result
    assert "accuracyBefore" in result["metrics"]  # 4 rankings carved out, as their 12 pairs


@pytest.mark.parametrize("stage_type, record", [
    ("sft", lambda i, long: {"prompt": ("9" * 40 if long else "") + f"{i}+1=", "completion": str(i + 1)}),
    ("preference", lambda i, long: {"prompt": ("9" * 40 if long else "") + f"{i}+1=", "chosen": str(i + 1),
                                    "rejected": str(i)}),
    ("reward", lambda i, long: {"prompt": ("9" * 40 if long else "") + f"{i}+1=", "chosen": str(i + 1),
                                "rejected": str(i)}),
])
def test_examples_too_long_are_dropped_and_counted_in_every_stage(stage_run, tmp_path, stage_type, record):
    # 5 of 40 records have a 40-character prompt: with maxLength 32 no response token is left
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(record(i, i % 8 == 0)) + "\n" for i in range(40)))
    stage = {"name": "s", "type": stage_type, "datasets": {"train": {"uri": f"file://{path}"}, "holdOut": False},
             "hyperparameters": {**HYPER, "maxSteps": 2, "maxLength": 32}}
    code, result = stage_run(stage, tmp_path / "store")
    assert code == EXIT_OK, result
    assert result["metrics"]["droppedExamples"] == 5.0


def test_packed_sft_trains(stage_run, tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps({"prompt": "x" * (i % 13) + f"{i % 10}+{i % 7}=", "completion": str(i % 10 + i % 7)})
                            + "\n" for i in range(200)))
    stage = {"name": "sft", "type": "sft", "datasets": {"train": {"uri": f"file://{path}"}},
             "hyperparameters": {**HYPER, "packing": True, "maxLength": 64, "batchSize": 2}}
    code, result = stage_run(stage, tmp_path / "store")
    assert code == EXIT_OK, result
    assert result["metrics"]["loss"] < result["metrics"]["lossFirst"]


def test_a_retry_reads_the_tokenised_data_its_first_attempt_kept(stage_run, tmp_path, monkeypatch, capfd):
    from alignops.storage import list_checkpoints, open_store
    from alignops.workloads.data import tokenized

    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{i}+1=", "completion": str(i + 1)}) + "\n" for i in range(50)))
    stage = {"name": "sft", "type": "sft", "datasets": {"train": {"uri": f"file://{path}"}},
             "hyperparameters": {**HYPER, "maxSteps": 2}}
    code, first = stage_run(stage, tmp_path / "store")
    assert code == EXIT_OK, first
    store = open_store(f"file://{tmp_path / 'store'}")
    kept = [k for k in store.list_keys("default/tiny/sft/data") if k.endswith("manifest.json")]
    assert len(kept) == 1  # committed like a checkpoint ...
    assert [ref.step for ref in list_checkpoints(store, "default/tiny/sft")] == [2]  # ... but not listed as one

    def no_tokenising(*args, **kwargs):
        raise AssertionError("the retry tokenised again")

    monkeypatch.setattr(tokenized, "tokenize", no_tokenising)
    capfd.readouterr()
    code, second = stage_run({**stage, "hyperparameters": {**stage["hyperparameters"], "maxSteps": 4}},
                             tmp_path / "store", attempt=2)
    assert code == EXIT_OK, second
    assert "tokenised sft data from file://" in capfd.readouterr().err
    assert second["metrics"]["steps"] == 4 and second["metrics"]["evalLossBefore"] == first["metrics"]["evalLossBefore"]
