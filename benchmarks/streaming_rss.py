"""Resident memory while a large JSON-lines file is streamed (``streaming: true``): the file is
written at run time (``--gigabytes``, 2 by default), read through whole as a streamed SFT stage
reads it (the same ``training_data`` path: reader, shuffle buffer, batched tokenisation, items
dropped for length counted), and the process's RSS sampled as it goes; then a short streamed SFT
stage trains on it with ``alignops run`` and its peak RSS is read from the kernel.

    python benchmarks/streaming_rss.py                  # 2 GB, prints a table
    python benchmarks/streaming_rss.py --gigabytes 0.5 --keep /tmp/big.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))
sys.path.insert(0, str(ROOT / "tests"))


def write_file(path: Path, gigabytes: float, filler: int) -> int:
    """SFT records of a short prompt and completion (tokenised) beside a long ``notes`` column
    (read, not tokenised), until the file holds ``gigabytes``."""
    target = int(gigabytes * 2**30)
    records = 0
    with open(path, "w") as handle:
        while handle.tell() < target:
            i = records
            handle.write(json.dumps({"prompt": f"Add {i % 997} and {i % 89}: ", "completion": str(i % 997 + i % 89),
                                     "notes": chr(97 + i % 26) * filler}) + "\n")
            records += 1
    return records


def drain(path: Path, records: int, scratch: Path) -> list[tuple[int, float, float]]:
    """(items read, seconds, RSS MiB) while reading the whole stream once."""
    os.environ["ALIGNOPS_SCRATCH"] = str(scratch)
    from data.test_data_streaming import _context  # the test's stage context, built the planner's way
    from alignops.workloads.data.training import training_data
    from alignops.workloads.models.build import build_tokenizer

    ctx = _context(scratch, f"file://{path}")
    data = training_data(ctx, "sft", build_tokenizer(), 64, 16, "sft", seed=5, step_items=64)
    process = psutil.Process()
    samples, start = [], time.perf_counter()
    every = max(1, (records - 16) // 20)
    for position in range(records - 16):
        data.items.row(position)
        if position % every == 0 or position == records - 17:
            samples.append((position + 1, time.perf_counter() - start, process.memory_info().rss / 2**20))
    return samples


def train(path: Path, workdir: Path, steps: int) -> tuple[int, float, float]:
    """(exit code, seconds, peak RSS MiB of the stage process) of a streamed SFT stage."""
    recipe = workdir / "stream.yaml"
    recipe.write_text(json.dumps({
        "apiVersion": "alignops.io/v1alpha1", "kind": "AlignmentJob", "metadata": {"name": "stream"},
        "spec": {"model": {"architecture": {"hiddenSize": 64, "layers": 2, "heads": 4, "maxPositions": 128}},
                 "stages": [{"name": "sft", "type": "sft",
                             "datasets": {"train": {"uri": f"file://{path}", "streaming": True}},
                             "hyperparameters": {"maxSteps": steps, "batchSize": 16, "evalSize": 32, "logEvery": 50}}]}}))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "alignops.cli.main", "run", str(recipe), "--workdir", str(workdir / "runs")],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "operator")})
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest child: the stage process
    if done.returncode:
        print(done.stdout[-2000:], done.stderr[-2000:], file=sys.stderr)
    return done.returncode, time.perf_counter() - start, peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gigabytes", type=float, default=2.0)
    parser.add_argument("--filler", type=int, default=8000, help="characters per record that are read, not tokenised")
    parser.add_argument("--steps", type=int, default=200, help="optimiser steps of the streamed SFT stage")
    parser.add_argument("--keep", type=Path, help="write the file here and keep it (default: a temporary directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / "big.jsonl"
        started = time.perf_counter()
        records = write_file(path, args.gigabytes, args.filler)
        size = path.stat().st_size
        print(f"wrote {size / 2**30:.2f} GiB, {records} records, in {time.perf_counter() - started:.0f}s", flush=True)
        samples = drain(path, records, Path(tmp))
        print(f"{'items read':>11s} {'GiB read':>9s} {'seconds':>8s} {'RSS MiB':>8s}")
        for items, seconds, rss in samples:
            print(f"{items:11d} {size * items / records / 2**30:9.2f} {seconds:8.0f} {rss:8.0f}")
        rss = [s[2] for s in samples]
        print(f"streamed {size / 2**30:.2f} GiB: RSS {rss[0]:.0f} MiB after the first items, peak {max(rss):.0f} MiB "
              f"(+{max(rss) - rss[0]:.0f} MiB), {samples[-1][1]:.0f}s")
        code, seconds, peak = train(path, Path(tmp), args.steps)
        print(f"streamed SFT stage ({args.steps} steps, batch 16): exit {code}, {seconds:.0f}s, peak RSS {peak:.0f} MiB")
        if args.keep is None:
            path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
