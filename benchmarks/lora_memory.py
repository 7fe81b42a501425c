"""Peak memory of LoRA DPO against full DPO (a benchmark, not a test).

One preference stage (DPO on the arithmetic pairs) run three ways through the stage entrypoint, each
in a fresh process, from the same base model (a llama saved with save_pretrained, as a user's model
directory is):

- ``full``: every weight trains; the reference is a second, frozen copy of the model;
- ``lora``: a LoRA adapter trains; the reference is the same model with the adapter off (no copy);
- ``lora+copy``: a LoRA adapter, with the reference named explicitly (the base loaded a second time),
  to show what the shared reference alone saves.

Peak memory is the process's peak resident set (VmHWM) above its resident set once torch,
transformers and peft are imported (on a GPU: ``torch.cuda.max_memory_allocated``). Expect full DPO
near 5 copies of the weights (policy, reference, gradients, AdamW's two moments) plus activations,
LoRA near 1 copy plus activations.

    .venv/bin/python benchmarks/lora_memory.py                          # hidden 768, 12 layers (~85M)
    .venv/bin/python benchmarks/lora_memory.py --hidden 512 --layers 8 --steps 4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIB = 1 << 20

# runs in the stage's process: imports first, then the baseline, the stage, and the peaks
PROBE = """
import json, sys
import torch, transformers, peft
import alignops.workloads.stages.preference
from alignops.workloads.entrypoint import main

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
baseline = status("VmRSS")
if torch.cuda.is_available():
    torch.cuda.reset_peak_memory_stats()
code = main([sys.argv[1]])
print(json.dumps({"code": code, "baseline": baseline, "peak": status("VmHWM"),
                  "gpu_peak": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None}))
"""


def base_model(directory: Path, hidden: int, layers: int) -> int:
    """Save the base model as a Hugging Face directory; returns its parameter count."""
    from alignops.api.common import Architecture
    from alignops.workloads.models.build import build_model, build_tokenizer

    tokenizer = build_tokenizer()
    arch = Architecture.model_validate({"hiddenSize": hidden, "layers": layers, "heads": max(1, hidden // 64),
                                        "maxPositions": 64, "seed": 0})
    model = build_model(arch, tokenizer)
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return sum(p.numel() for p in model.parameters())


def trainable(directory: Path, adapter: dict | None) -> int:
    from transformers import AutoModelForCausalLM

    from alignops.api.common import LoraAdapter
    from alignops.workloads.models.adapter import AdapterBase, add_adapter

    model = AutoModelForCausalLM.from_pretrained(str(directory))
    if adapter is not None:
        model = add_adapter(model, LoraAdapter.model_validate(adapter), AdapterBase(None))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def run_variant(name: str, model_uri: str, adapter: dict | None, copy_reference: bool, args, workdir: Path) -> dict:
    from alignops.api.validation import parse_job
    from alignops.planner import Defaults, initial_status, resolve_run

    stage = {"name": "dpo", "type": "preference", "algorithm": "dpo",
             "datasets": {"train": {"generator": "arithmetic", "size": args.batch_size * args.steps, "seed": 2}},
             "hyperparameters": {"beta": 0.1, "learningRate": 1e-4, "batchSize": args.batch_size, "maxSteps": args.steps,
                                 "warmupSteps": 1, "maxLength": 32, "logEvery": 1, "checkpointEvery": 1_000_000,
                                 "evalSize": 8, "precision": "fp32"}}
    if adapter is not None:
        stage["adapter"] = adapter
    if copy_reference:
        stage["reference"] = {"uri": model_uri}
    job = parse_job({"apiVersion": "alignops.io/v1alpha1", "kind": "AlignmentJob", "metadata": {"name": "mem"},
                     "spec": {"model": {"uri": model_uri}, "stages": [stage]}})
    run_dir = workdir / name
    run_dir.mkdir()
    config = resolve_run(job, initial_status(job), "dpo", 1, Defaults(storage_uri=f"file://{run_dir}"))
    config_path = run_dir / "config.json"
    config_path.write_text(config.to_json())
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "ALIGNOPS_RESULT_PATH": str(run_dir / "result.json"),
           "ALIGNOPS_SCRATCH": str(run_dir)}
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", PROBE, str(config_path)], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if out.returncode != 0:
        raise SystemExit(f"{name} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    if probe["code"] != 0:
        raise SystemExit(f"{name}: the stage exited {probe['code']}: {(run_dir / 'result.json').read_text()}")
    return {**probe, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    adapter = {"rank": args.rank, "targetModules": "all-linear"}
    with tempfile.TemporaryDirectory(prefix="lora-memory-") as tmp:
        workdir = Path(tmp)
        params = base_model(workdir / "base", args.hidden, args.layers)
        uri = f"file://{workdir / 'base'}"
        variants = [("full", None, False), ("lora", adapter, False), ("lora+copy", adapter, True)]
        rows = []
        for name, spec, copy_reference in variants:
            result = run_variant(name, uri, spec, copy_reference, args, workdir)
            rows.append((name, trainable(workdir / "base", spec), result))
    device = "GPU" if rows[0][2]["gpu_peak"] is not None else "CPU"
    print(f"DPO, llama hidden {args.hidden} x {args.layers} layers: {params / 1e6:.1f}M parameters "
          f"({params * 4 / MIB:.0f} MiB fp32), batch {args.batch_size} pairs, {args.steps} steps, {device}, LoRA rank {args.rank}")
    header = ("variant", "trainable", "peak RSS MiB", "above start", "GPU peak MiB", "seconds")
    print("{:<10} {:>11} {:>13} {:>12} {:>13} {:>8}".format(*header))
    full_above = rows[0][2]["peak"] - rows[0][2]["baseline"]
    for name, count, r in rows:
        above = r["peak"] - r["baseline"]
        gpu = f"{r['gpu_peak'] / MIB:.0f}" if r["gpu_peak"] is not None else "-"
        print(f"{name:<10} {count / 1e6:>10.2f}M {r['peak'] / MIB:>13.0f} {above / MIB:>8.0f} ({above / full_above:>4.0%})"
              f" {gpu:>13} {r['seconds']:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
