"""benchmarks/gpu_train.py at its tiny CPU size (the GPU run's numbers are the benchmark's, not a
test's): every trainer's row trains, AlignOps' rows go through the real stages' TrainLoop with the
tokens they were given, the ZeRO-3 hook says it is pending, and the table fits 80 columns."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from suite import REPO

pytestmark = pytest.mark.slow


def test_gpu_train_runs_tiny_on_the_cpu(tmp_path):
    out = tmp_path / "rows.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_train.py"), "--tiny", "--json", str(out)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "ALIGNOPS_CPU_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads(out.read_text())
    trained = [r for r in rows if r["trainer"] in ("plain", "alignops", "trl")]
    assert {(r["method"], r["trainer"]) for r in trained} == {
        ("sft", "plain"), ("sft", "alignops"), ("sft", "trl"), ("dpo", "alignops"), ("dpo", "trl")}
    for r in trained:
        assert r["note"] == "" and r["tokens_per_second"] > 0 and r["startup_s"] >= 0 and r["commit_s"] > 0, r
        assert math.isfinite(r["extra"]["loss"]), r
    for r in rows:
        if r["trainer"] == "alignops" and r["method"] == "sft":
            # 2 timed steps x 256 tokens per step, every sequence exactly `length` tokens long
            assert r["tokens"] == 2 * 256, r
            # a random-initialised model on random letters: the loss starts near log(vocabulary)
            assert abs(r["extra"]["loss"] - math.log(2048)) < 1.0, r
    assert [r["note"] for r in rows if r["trainer"] == "alignops-zero3"] == ["pending ZeRO-3"]
    table = done.stdout[done.stdout.index("row "):].splitlines()
    assert len(table) >= len(rows) + 2 and max(len(line) for line in table) <= 80
