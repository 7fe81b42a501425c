"""How long checkpoint commits hold training up (a benchmark, not a test: about a minute on 2 cores).

One TrainLoop trains a random-initialised llama (``--hidden``, ``--layers``) on random tokens
for ``--steps`` optimiser steps with a checkpoint every ``--every`` steps, committed to a local
store, three ways, side by side in one run:

- ``sync, optimizer in final``: each commit written and uploaded before training goes on, the final
  checkpoint with the optimizer state (how commits worked before);
- ``sync``: the same, the final checkpoint with the weights alone;
- ``overlapped``: as AlignOps commits now: the state is taken in step and the worker thread writes
  the weights and uploads while training goes on; the stage waits only for what is still in flight.

Per row: wall seconds of the run, seconds training was held up by commits (taking the state, and
waiting for uploads), the worker's seconds, and the final checkpoint's bytes. On a GPU the host
copy is a device-to-host copy and the worker's write and upload run beside GPU work; on the CPU the
worker competes with training for the same cores, so the CPU figures understate the gain.

    .venv/bin/python benchmarks/commit_overlap.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/commit_overlap.py   # training on one core, the
                                # worker on the other: as a GPU run leaves the host's cores free
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as hf_logging

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))

from alignops.api.hyperparameters import SftHyperparameters  # noqa: E402
from alignops.contract import DistributedRun  # noqa: E402
from alignops.storage import list_checkpoints, open_store  # noqa: E402
from alignops.workloads.context import MetricsSink, RunContext  # noqa: E402
from alignops.workloads.training.loop import MicroBatchLoss, TrainLoop  # noqa: E402


class SyncLoop(TrainLoop):
    """Every commit finished before training goes on; ``optimizer_in_final``: the final checkpoint
    carries the optimizer state too."""

    optimizer_in_final = False

    def commit(self, final: bool = False) -> None:
        super().commit(final=final and not self.optimizer_in_final)
        self.wait_committed()


class SyncFullLoop(SyncLoop):
    optimizer_in_final = True


def run_row(loop_class, args, root: Path, name: str) -> dict:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64),
                         max_position_embeddings=args.length)
    model = LlamaForCausalLM(config)
    data = torch.randint(0, args.vocab, (args.batch, args.length))

    def loss(model, rows):
        return MicroBatchLoss(model(input_ids=data[rows], labels=data[rows]).loss, len(rows) * args.length)

    hp = SftHyperparameters.model_validate({"learningRate": 1e-4, "batchSize": args.batch, "maxSteps": args.steps,
                                            "checkpointEvery": args.every, "keepCheckpoints": 2, "logEvery": 1000,
                                            "warmupSteps": 0})
    ctx = RunContext(config=types.SimpleNamespace(stage_key=f"bench/{name}", distributed=DistributedRun()),
                     store=open_store(f"file://{root / 'store'}"), scratch=root / f"scratch-{name}", metrics=MetricsSink())
    loop = loop_class(ctx, model, hp, loss, lambda directory: None, dataset_size=args.batch)
    started = time.perf_counter()
    final = loop.run()
    wall = time.perf_counter() - started
    ctx.commits.drain()
    directory = ctx.store.local_path(final.key)
    size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    assert [ref.step for ref in list_checkpoints(ctx.store, f"bench/{name}")][-1] == args.steps
    return {"wall": wall, "held": loop.commit_seconds, "worker": ctx.commits.seconds, "bytes": size,
            "parameters": sum(p.numel() for p in model.parameters())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--every", type=int, default=3)
    args = parser.parse_args()
    hf_logging.disable_progress_bar()
    rows = [("sync, optimizer in final", SyncFullLoop), ("sync", SyncLoop), ("overlapped", TrainLoop)]
    root = Path(tempfile.mkdtemp(prefix="commit-overlap-"))
    try:
        run_row(TrainLoop, argparse.Namespace(**{**vars(args), "steps": args.every}), root, "warm-up")  # imports, first allocations
        results = [(label, run_row(cls, args, root, f"row{i}")) for i, (label, cls) in enumerate(rows)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    parameters = results[0][1]["parameters"]
    print(f"{parameters / 1e6:.1f}M parameters, {args.steps} steps, a checkpoint every {args.every} "
          f"({args.steps // args.every} commits), batch {args.batch} x {args.length} tokens, local store")
    header = f"{'commits':<26}{'wall s':>8}{'held s':>8}{'worker s':>10}{'final MB':>10}{'vs first':>10}"
    print(header)
    print("-" * len(header))
    base = results[0][1]["wall"]
    for label, r in results:
        print(f"{label:<26}{r['wall']:>8.1f}{r['held']:>8.1f}{r['worker']:>10.1f}{r['bytes'] / 1e6:>10.0f}{base / r['wall']:>9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
