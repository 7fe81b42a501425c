"""DPO training throughput: our `preference` stage against TRL's DPOTrainer, side by side in one run
(a benchmark, not a test).

Both train the same tiny llama (the zephyr-dpo recipe's architecture, built from the same seed, so
the same initial weights) with the same character tokenizer on the same arithmetic pairs, batch
size, step count, learning rate and beta, on the CPU with the same number of threads. Throughput is
pairs per second over the optimiser steps after a warm-up (both compute the reference log-probs on
the fly in their first epoch: ours caches them for later epochs, TRL's default does not; this run is
one epoch), so start-up, data preparation and evaluation are left out of both. TRL's default
gradient checkpointing is turned off, as our stage does none.

    .venv/bin/python benchmarks/dpo_vs_trl.py                 # batch 32, 60 steps, 2 threads
    .venv/bin/python benchmarks/dpo_vs_trl.py --batch-size 16 --steps 100 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "pipelines" / "zephyr-dpo.yaml"
WARMUP_STEPS = 5


def architecture() -> dict:
    return yaml.safe_load(RECIPE.read_text())["spec"]["model"]["architecture"]


def ours(args, workdir: Path) -> float:
    """Pairs/s of `python -m alignops.workloads` on a one-stage preference job (base model -> DPO)."""
    from alignops.api.validation import parse_job
    from alignops.planner import Defaults, initial_status, resolve_run

    stage = {"name": "dpo", "type": "preference", "algorithm": "dpo",
             "datasets": {"train": {"generator": "arithmetic", "size": args.batch_size * args.steps, "seed": 2}},
             "hyperparameters": {"beta": 0.1, "learningRate": 3e-4, "batchSize": args.batch_size, "maxSteps": args.steps,
                                 "warmupSteps": WARMUP_STEPS, "maxLength": 32, "logEvery": 1, "checkpointEvery": 1_000_000,
                                 "evalSize": 8}}
    job = parse_job({"apiVersion": "alignops.io/v1alpha1", "kind": "AlignmentJob", "metadata": {"name": "bench"},
                     "spec": {"model": {"architecture": architecture()}, "stages": [stage]}})
    config = resolve_run(job, initial_status(job), "dpo", 1, Defaults(storage_uri=f"file://{workdir}"))
    config_path, metrics_path = workdir / "config.json", workdir / "metrics.jsonl"
    config_path.write_text(config.to_json())
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "ALIGNOPS_METRICS_LOG": str(metrics_path),
           "ALIGNOPS_RESULT_PATH": str(workdir / "result.json")}
    subprocess.run([sys.executable, "-m", "alignops.workloads", str(config_path)], env=env, check=True)
    times = {r["step"]: r["time"] for r in map(json.loads, metrics_path.read_text().splitlines()) if "loss" in r}
    return (args.steps - WARMUP_STEPS) * args.batch_size / (times[args.steps] - times[WARMUP_STEPS])


def trl(args, workdir: Path) -> float:
    """Pairs/s of trl.DPOTrainer on the same model, data and settings (in this process)."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from alignops.api.common import Architecture
    from alignops.demo import generate
    from alignops.workloads.models.build import build_model, build_tokenizer

    torch.set_num_threads(args.threads)
    tokenizer = build_tokenizer()
    model = build_model(Architecture.model_validate(architecture()), tokenizer)
    data = Dataset.from_list(generate("pairs", args.batch_size * args.steps, 2))
    stamps: dict[int, float] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, _args, state, control, **kwargs):
            stamps[state.global_step] = time.perf_counter()

    config = DPOConfig(
        output_dir=str(workdir / "trl"), per_device_train_batch_size=args.batch_size, max_steps=args.steps,
        learning_rate=3e-4, lr_scheduler_type="cosine", warmup_steps=WARMUP_STEPS, beta=0.1, loss_type=["sigmoid"],
        max_length=32, logging_steps=1_000_000, save_strategy="no", report_to=[], use_cpu=True, seed=0,
        dataloader_num_workers=0,
        gradient_checkpointing=False,  # TRL's default recomputes activations; our stage does not
    )
    # the frozen reference: a copy of the starting model (TRL would load it again from a hub path)
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=config, train_dataset=data,
                         processing_class=tokenizer, callbacks=[Clock()])
    trainer.train()
    return (args.steps - WARMUP_STEPS) * args.batch_size / (stamps[args.steps] - stamps[WARMUP_STEPS])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="alignops-dpo-bench-") as tmp:
        ours_rate = ours(args, Path(tmp))
        trl_rate = trl(args, Path(tmp))
    import trl as trl_package

    arch = architecture()
    print(f"\nDPO training throughput, {arch['layers']} layers x {arch['hiddenSize']} hidden llama, batch {args.batch_size}, "
          f"{args.steps} steps (timed after step {WARMUP_STEPS}), {args.threads} threads, {os.cpu_count()} CPUs")
    print(f"{'trainer':<28}{'pairs/s':>10}")
    print(f"{'alignops preference (dpo)':<28}{ours_rate:>10.1f}")
    print(f"{'trl ' + trl_package.__version__ + ' DPOTrainer':<28}{trl_rate:>10.1f}")
    print(f"{'ratio (alignops / trl)':<28}{ours_rate / trl_rate:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
