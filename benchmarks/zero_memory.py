"""What ZeRO saves, measured: one SFT stage run as a user runs it (`alignops run`), the same model
and data on one process without DeepSpeed (the anchor) and on N processes under ZeRO 0-3 (with
offloads), side by side: the largest peak memory of any process, the run's step time, and the loss
at the last step (the same at every setting: the same global batch and data order).

On the CPU (gloo) the memory is each process's resident set at the last step, libraries included
(~0.6 GB of torch, transformers and DeepSpeed): compare the differences between rows, which are the
training state. On a GPU it is the peak GPU memory held by tensors during the last steps.

    python benchmarks/zero_memory.py                      # 2 processes, a 33M-parameter llama, CPU
    python benchmarks/zero_memory.py --hidden 1024 --layers 16 --processes 4
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe_runs import fmt, print_aligned, run_recipe  # noqa: E402

SETTINGS = [  # (label, processes, distributed settings or None)
    ("one process, no DeepSpeed", 1, None),
    ("ZeRO-0 (data parallel)", None, {"zeroStage": 0}),
    ("ZeRO-1", None, {"zeroStage": 1}),
    ("ZeRO-2", None, {"zeroStage": 2}),
    ("ZeRO-3", None, {"zeroStage": 3}),
    ("ZeRO-3 + optimizer offload", None, {"zeroStage": 3, "offloadOptimizer": True}),
]


def manifest(args, processes: int, distributed: dict | None) -> dict:
    stage = {"name": "sft", "type": "sft", "datasets": {"train": {"generator": "arithmetic", "size": 2000}},
             "resources": {"gpus": processes},
             "hyperparameters": {"maxSteps": args.steps, "batchSize": args.batch, "logEvery": args.steps // 2,
                                 "checkpointEvery": 10**6, "evalSize": 8, "maxLength": 32, "learningRate": 1e-4}}
    if distributed is not None:
        stage["distributed"] = distributed
    heads = max(1, args.hidden // 64)
    return {"apiVersion": "alignops.io/v1alpha1", "kind": "AlignmentJob", "metadata": {"name": "zero"},
            "spec": {"model": {"architecture": {"hiddenSize": args.hidden, "layers": args.layers, "heads": heads,
                                                "maxPositions": 64}},
                     "stages": [stage]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    params = args.layers * (4 * args.hidden**2 + 3 * args.hidden * 4 * args.hidden)
    print(f"llama, hidden {args.hidden}, {args.layers} layers: ~{params / 1e6:.0f}M parameters "
          f"(fp32 weights + gradients + AdamW state: {16 * params / 2**30:.2f} GiB in all)\n")
    rows, anchor = [], None
    for label, processes, distributed in SETTINGS:
        processes = processes or args.processes
        with tempfile.TemporaryDirectory() as tmp:
            recipe = Path(tmp) / "zero.yaml"
            recipe.write_text(yaml.safe_dump(manifest(args, processes, distributed)))
            _, status, _ = run_recipe(recipe, Path(tmp) / "runs")
            lines = (Path(tmp) / "runs/zero/sft/metrics.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines if '"loss"' in line]
        if not records or status.get("phase") != "Succeeded":
            rows.append([label, str(processes), "failed", "-", "-", "-"])
            continue
        last = records[-1]
        peak = last.get("gpu_memory_step_peak_bytes", last["memory_resident_bytes"]) / 2**30
        anchor = anchor or peak
        rows.append([label, str(processes), f"{peak:.2f}", f"{peak / anchor:.2f}", f"{1000 * last['step_time']:.0f}",
                     fmt(last["loss"])])
    print_aligned(("setting", "processes", "GiB/process", "vs one", "step ms", "last loss"), rows)


if __name__ == "__main__":
    main()
