"""``streaming: true``: a file much larger than the memory it may take is read through whole with
the process's RSS growing by a bounded amount; a restarted stream gives the same items at the same
positions (exact resume); a streamed SFT stage trains; a stream without maxSteps is refused."""

from __future__ import annotations

import json
import signal

import psutil
import pytest

from alignops.api.validation import parse_job
from alignops.contract import EXIT_CONFIG
from alignops.planner import Defaults, initial_status, resolve_run
from alignops.workloads.context import make_context
from alignops.workloads.data.training import training_data
from alignops.workloads.models.build import build_tokenizer
from stages.conftest import tiny_job

RECORDS = 12_000
FILLER = 9000  # characters per record that are read (JSON, Arrow) but not tokenised
WARM_UP = 1500
RSS_BOUND = 48 * 2**20  # the file is more than twice as large


def _big_file(path) -> int:
    """About 108 MB of SFT records with a large extra column."""
    with open(path, "w") as handle:
        for i in range(RECORDS):
            handle.write(json.dumps({"prompt": f"{i % 97}+{i % 89}=", "completion": str(i % 97 + i % 89),
                                     "meta": chr(97 + i % 26) * FILLER}) + "\n")
    return path.stat().st_size


def _context(tmp_path, uri: str, **hyper):
    stage = {"name": "sft", "type": "sft", "datasets": {"train": {"uri": uri, "streaming": True}},
             "hyperparameters": {"maxSteps": 4, "batchSize": 8, "evalSize": 16, "seed": 5, **hyper}}
    job = parse_job(tiny_job(stage))
    config = resolve_run(job, initial_status(job), "sft", 1, Defaults(storage_uri=f"file://{tmp_path / 'store'}"))
    original = signal.getsignal(signal.SIGTERM)
    try:
        return make_context(config)
    finally:
        signal.signal(signal.SIGTERM, original)


def test_streaming_a_large_file_keeps_rss_bounded(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNOPS_SCRATCH", str(tmp_path))
    size = _big_file(tmp_path / "big.jsonl")
    ctx = _context(tmp_path, f"file://{tmp_path / 'big.jsonl'}")
    data = training_data(ctx, "sft", build_tokenizer(), 64, 16, "sft", seed=5, step_items=8)
    assert data.streamed and len(data.carved) == 16  # the stream's first evalSize records are held out
    process = psutil.Process()
    for position in range(WARM_UP):  # the shuffle buffer, the reader's first chunks, the allocator's pools
        data.items.row(position)
    start = process.memory_info().rss
    peak = start
    held = {r["prompt"] for r in data.carved}
    seen = WARM_UP
    for position in range(WARM_UP, RECORDS - 16):
        row = data.items.row(position)
        seen += 1
        if position % 250 == 0:
            peak = max(peak, process.memory_info().rss)
    assert seen == RECORDS - 16 and data.dropped_examples == 0
    assert row["input_ids"][0] == 1  # tokenised (bos first), the filler column gone
    print(f"streamed {size / 2**20:.0f} MiB: RSS {start / 2**20:.0f} MiB -> peak {peak / 2**20:.0f} MiB")
    assert size > 2 * RSS_BOUND
    assert peak - start < RSS_BOUND, f"RSS grew by {(peak - start) / 2**20:.0f} MiB reading {size / 2**20:.0f} MiB"
    assert held  # the held-out prompts exist and are text


def test_a_restarted_stream_gives_the_same_items_at_the_same_positions(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNOPS_SCRATCH", str(tmp_path))
    path = tmp_path / "small.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{i}+1=", "completion": str(i + 1)}) + "\n" for i in range(300)))
    ctx = _context(tmp_path, f"file://{path}")
    tokenizer = build_tokenizer()
    whole = training_data(ctx, "sft", tokenizer, 64, 16, "sft", seed=5, step_items=8).items
    first = [whole.row(p)["input_ids"] for p in range(600)]  # two epochs
    resumed = training_data(ctx, "sft", tokenizer, 64, 16, "sft", seed=5, step_items=8).items
    assert [resumed.row(p)["input_ids"] for p in range(410, 600)] == first[410:]
    assert first[:284] != first[284:568]  # the second epoch is shuffled anew
    assert sorted(map(tuple, first[:284])) == sorted(map(tuple, first[284:568]))  # over the same items
    other_seed = training_data(ctx, "sft", tokenizer, 64, 16, "sft", seed=6, step_items=8).items
    assert [other_seed.row(p)["input_ids"] for p in range(50)] != first[:50]


@pytest.mark.slow
def test_a_streamed_sft_stage_trains_and_needs_max_steps(stage_run, tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{i % 10}+{i % 7}=", "completion": str(i % 10 + i % 7)}) + "\n"
                            for i in range(400)))
    stage = {"name": "sft", "type": "sft", "datasets": {"train": {"uri": f"file://{path}", "streaming": True}},
             "hyperparameters": {"maxSteps": 12, "batchSize": 8, "evalSize": 16, "learningRate": 0.01, "logEvery": 1}}
    code, result = stage_run(stage, tmp_path / "store")
    assert code == 0, result
    assert result["metrics"]["steps"] == 12 and result["metrics"]["loss"] < result["metrics"]["lossFirst"]
    assert "evalLossBefore" in result["metrics"]  # held out from the stream's head
    stage["hyperparameters"].pop("maxSteps")
    code, result = stage_run(stage, tmp_path / "store2")
    assert code == EXIT_CONFIG and "set hyperparameters.maxSteps" in result["message"]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "1+1=", "chosen": "2", "rejected": "3"}) + "\n")
    dpo = {"name": "dpo", "type": "preference", "datasets": {"train": {"uri": f"file://{pairs}", "streaming": True}},
           "hyperparameters": {"maxSteps": 2}}
    code, result = stage_run(dpo, tmp_path / "store3")
    assert code == EXIT_CONFIG and "streaming is supported for sft data" in result["message"]
