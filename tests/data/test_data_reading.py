"""Reading datasets: every file type and a directory of shards give the same records; ``fields``
maps column names; the Hub through an offline cache laid out as huggingface_hub lays it out; S3
through the storage layer; the format is checked from the columns; errors name FILE:LINE for JSON
lines and FILE row N for tables; the held-out split is seeded and disjoint; batched tokenisation in
several processes gives what one process gives."""

from __future__ import annotations

import json
import uuid

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from alignops.api.common import DatasetSource
from alignops.workloads.data.reading import open_source
from alignops.workloads.data.records import DatasetError
from alignops.workloads.data.tokenized import carve, check_format, tokenize
from data.conftest import write_jsonl

PAIRS = [{"prompt": f"{i}+1=", "chosen": str(i + 1), "rejected": str(i + 2)} for i in range(20)]


def _source(uri: str, **extra) -> DatasetSource:
    return DatasetSource.model_validate({"uri": uri, **extra})


def _tokens(source: DatasetSource, tokenizer, tmp_path, view: str = "pairs") -> list[dict]:
    raw = open_source(source, None, tmp_path / "scratch", "pairs")
    key = None if source.streaming else uuid.uuid4().hex  # a fresh cache file name per call
    return tokenize(raw.dataset, view, tokenizer, 64, raw.places, key=key).to_list()


def _table(records: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(records)


def test_every_file_type_and_a_directory_of_shards_read_the_same(tmp_path, demo_tokenizer):
    expected = _tokens(_source(write_jsonl(tmp_path / "pairs.jsonl", PAIRS)), demo_tokenizer, tmp_path)
    ids = lambda text: demo_tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    eos = demo_tokenizer.eos_token_id
    assert len(expected) == 20
    assert expected[0]["prompt_ids"] == [demo_tokenizer.bos_token_id] + ids("0+1=")
    assert expected[0]["responses"] == [ids("1") + [eos], ids("2") + [eos]]
    (tmp_path / "pairs.json").write_text(json.dumps(PAIRS))
    pq.write_table(_table(PAIRS), tmp_path / "pairs.parquet")
    pcsv.write_csv(_table(PAIRS), tmp_path / "pairs.csv")
    with pa.OSFile(str(tmp_path / "pairs.arrow"), "wb") as sink, pa.ipc.new_stream(sink, _table(PAIRS).schema) as writer:
        writer.write_table(_table(PAIRS))
    shards = tmp_path / "shards"
    shards.mkdir()
    pq.write_table(_table(PAIRS[:7]), shards / "train-00000-of-00002.parquet")
    pq.write_table(_table(PAIRS[7:]), shards / "train-00001-of-00002.parquet")
    for name in ("pairs.json", "pairs.parquet", "pairs.csv", "pairs.arrow", "shards"):
        assert _tokens(_source(f"file://{tmp_path / name}"), demo_tokenizer, tmp_path) == expected, name
    streamed = _tokens(_source(f"file://{tmp_path / 'pairs.parquet'}", streaming=True), demo_tokenizer, tmp_path)
    assert [{k: v for k, v in row.items()} for row in streamed] == expected


def test_fields_map_the_datasets_own_column_names(tmp_path, demo_tokenizer):
    renamed = [{"question": r["prompt"], "good": r["chosen"], "bad": r["rejected"], "prompt": "ignored"} for r in PAIRS]
    pq.write_table(_table(renamed), tmp_path / "custom.parquet")
    uri = f"file://{tmp_path / 'custom.parquet'}"
    fields = {"prompt": "question", "chosen": "good", "rejected": "bad"}
    expected = _tokens(_source(write_jsonl(tmp_path / "pairs.jsonl", PAIRS)), demo_tokenizer, tmp_path)
    assert _tokens(_source(uri, fields=fields), demo_tokenizer, tmp_path) == expected
    with pytest.raises(DatasetError, match="fields.chosen names column `best`, which the data does not have; "
                                           "its columns: question, good, bad, prompt"):
        open_source(_source(uri, fields={**fields, "chosen": "best"}), None, tmp_path, "pairs")


def test_the_format_is_checked_from_the_columns():
    check_format("x", ["prompt", "chosen", "rejected"], "pairs", "preference", None)
    check_format("x", ["chosen", "rejected"], "pairs", "preference", None)  # implicit prompt
    check_format("x", ["prompt", "completion", "label"], "unpaired", "preference", None)
    check_format("x", ["messages"], "sft", "sft", None)
    with pytest.raises(DatasetError, match=r"x has columns prompt, completion \(sft records\); a preference stage reads "
                                           r"pairs or rankings records"):
        check_format("x", ["prompt", "completion"], "pairs", "preference", None)
    with pytest.raises(DatasetError, match="format rankings is not what a sft stage reads"):
        check_format("x", ["prompt", "completion"], "sft", "sft", "rankings")


def test_errors_name_the_line_of_json_lines_and_the_row_of_tables(tmp_path, demo_tokenizer):
    good = {"prompt": "p", "responses": ["a", "b"], "ranking": [0, 1]}
    bad = {"prompt": "p", "responses": ["a", "b"], "ranking": [0, 0]}
    path = tmp_path / "ranks.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (good, good)) + "\n\n" + json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DatasetError, match=r"ranks.jsonl:5: field `ranking` must order all 2 responses"):
        _tokens(_source(f"file://{path}"), demo_tokenizer, tmp_path, "comparisons")
    pq.write_table(_table([good, good, bad]), tmp_path / "ranks.parquet")
    with pytest.raises(DatasetError, match=r"ranks.parquet row 3: field `ranking` must order all 2"):
        _tokens(_source(f"file://{tmp_path / 'ranks.parquet'}"), demo_tokenizer, tmp_path, "comparisons")
    shards = tmp_path / "shards"
    shards.mkdir()
    write_jsonl(shards / "train-0.jsonl", [good] * 3)
    write_jsonl(shards / "train-1.jsonl", [good, bad])
    with pytest.raises(DatasetError, match=r"shards/train-1.jsonl:2: field `ranking`"):
        _tokens(_source(f"file://{shards}"), demo_tokenizer, tmp_path, "comparisons")


def _hub_cache(root, repo: str, revision: str = "a" * 40):
    """A dataset repository in the Hugging Face cache, as huggingface_hub lays it out."""
    base = root / "hub" / f"datasets--{repo.replace('/', '--')}"
    snapshot = base / "snapshots" / revision
    (snapshot / "data").mkdir(parents=True)
    (snapshot / "small").mkdir()
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(revision)
    pq.write_table(_table(PAIRS[:15]), snapshot / "data" / "train-00000-of-00001.parquet")
    pq.write_table(_table(PAIRS[15:]), snapshot / "data" / "test-00000-of-00001.parquet")
    pq.write_table(_table(PAIRS[:2]), snapshot / "small" / "train-00000-of-00001.parquet")
    (snapshot / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*\n"
        "  - split: test\n    path: data/test-*\n- config_name: small\n  data_files:\n  - split: train\n"
        "    path: small/train-*\n---\n# prefs\n")


def test_hub_datasets_read_offline_from_the_cache(tmp_path, monkeypatch, demo_tokenizer):
    from huggingface_hub import constants

    _hub_cache(tmp_path / "hf", "acme/prefs")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub = lambda **extra: DatasetSource.model_validate({"hub": "acme/prefs", **extra})  # noqa: E731
    expected = _tokens(_source(write_jsonl(tmp_path / "pairs.jsonl", PAIRS)), demo_tokenizer, tmp_path)
    assert _tokens(hub(), demo_tokenizer, tmp_path) == expected[:15]
    assert _tokens(hub(split="test", revision="main"), demo_tokenizer, tmp_path) == expected[15:]
    assert _tokens(hub(subset="small"), demo_tokenizer, tmp_path) == expected[:2]
    with pytest.raises(DatasetError, match=r"acme/prefs@v2 is not in the Hugging Face cache and the Hub is offline"):
        open_source(hub(revision="v2"), None, tmp_path, "pairs")
    with pytest.raises(DatasetError, match="has no split 'validation'; it has test, train"):
        open_source(hub(split="validation"), None, tmp_path, "pairs")


def test_s3_files_and_prefixes_come_through_the_storage_layer(tmp_path, s3_bucket, s3_env, demo_tokenizer):
    import boto3

    from alignops.storage import StorageOptions

    s3 = boto3.client("s3")
    pq.write_table(_table(PAIRS), tmp_path / "pairs.parquet")
    s3.upload_file(str(tmp_path / "pairs.parquet"), s3_bucket, "data/pairs.parquet")
    for i, part in enumerate((PAIRS[:5], PAIRS[5:])):
        s3.put_object(Bucket=s3_bucket, Key=f"data/shards/part-{i}.jsonl", Body="".join(json.dumps(r) + "\n" for r in part))
    expected = _tokens(_source(write_jsonl(tmp_path / "pairs.jsonl", PAIRS)), demo_tokenizer, tmp_path)
    options = StorageOptions(endpoint=s3_env["AWS_ENDPOINT_URL"])
    for uri in (f"s3://{s3_bucket}/data/pairs.parquet", f"s3://{s3_bucket}/data/shards"):
        raw = open_source(_source(uri), options, tmp_path / "scratch", "pairs")
        assert tokenize(raw.dataset, "pairs", demo_tokenizer, 64, raw.places, uuid.uuid4().hex).to_list() == expected, uri
    with pytest.raises(DatasetError, match=f"dataset s3://{s3_bucket}/data/absent.jsonl not found") as missing:
        open_source(_source(f"s3://{s3_bucket}/data/absent.jsonl"), options, tmp_path / "scratch", "pairs")
    assert s3_env["AWS_SECRET_ACCESS_KEY"] not in str(missing.value)


def test_the_held_out_split_is_seeded_and_disjoint(tmp_path):
    records = [{"prompt": str(i), "completion": "x"} for i in range(300)]
    raw = open_source(_source(write_jsonl(tmp_path / "sft.jsonl", records)), None, tmp_path, "sft")
    rows, places, held = carve(raw, eval_size=200, seed=1)
    # min(evalSize, 10%) of 300 records; the rest train; none in both
    assert len(held) == 30 and len(rows) == 270
    assert {r["prompt"] for r in held}.isdisjoint(r["prompt"] for r in rows.to_list())
    again = carve(open_source(_source(write_jsonl(tmp_path / "sft.jsonl", records)), None, tmp_path, "sft"), 200, 1)[2]
    assert list(held) == list(again)  # the same seed, the same split
    assert list(held) != list(carve(raw, 200, 2)[2])
    # a training row names its own line, past the held-out rows carved before it
    first = next(i for i in range(300) if i not in places.removed)
    assert places.place(0).endswith(f":{first + 1}") and held.place(0).endswith(f":{places.removed[0] + 1}")


def test_batched_tokenisation_in_processes_matches_one_process(tmp_path, demo_tokenizer):
    raw = open_source(_source(write_jsonl(tmp_path / "pairs.jsonl", PAIRS * 10)), None, tmp_path, "pairs")
    one = tokenize(raw.dataset, "pairs", demo_tokenizer, 64, raw.places, "one").to_list()
    two = tokenize(raw.dataset, "pairs", demo_tokenizer, 64, raw.places, "two", num_proc=2).to_list()
    assert one == two and len(one) == 200


def test_items_dropped_for_length_leave_the_columns_aligned(tmp_path, demo_tokenizer):
    from alignops.algos import IGNORE_INDEX
    from alignops.workloads.data.tokenized import SftItems, drop_unlearnable

    # every third prompt fills maxLength 16: dropped; the step normaliser and packing lengths that
    # are read column-wise must still be those of the items left
    records = [{"prompt": ("x" * 20 if i % 3 == 0 else "") + f"{i}=", "completion": "y" * (i % 5 + 1)} for i in range(30)]
    raw = open_source(_source(write_jsonl(tmp_path / "sft.jsonl", records)), None, tmp_path, "sft")
    kept, dropped = drop_unlearnable(tokenize(raw.dataset, "sft", demo_tokenizer, 16, raw.places, uuid.uuid4().hex),
                                     "sft", "sft.jsonl", 16)
    items = SftItems(kept)
    assert dropped == 10 and len(items) == 20
    for i in range(20):
        example = items[i]
        assert items.response_tokens([i]) == sum(label != IGNORE_INDEX for label in example.labels) > 0
        assert items.lengths()[i] == len(example.input_ids)
