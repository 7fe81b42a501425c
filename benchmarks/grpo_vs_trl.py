"""Our GRPO stage against TRL's ``GRPOTrainer``, side by side in one run (a benchmark, not a test).

Both start from the same tiny checkpoint, see the same prompts (``rounds x prompts`` training
prompts of the arithmetic task, each once), sample ``samples`` responses per prompt at temperature 1
without top-k, score them with the same exact-answer verifier
(``alignops.demo.arithmetic.is_correct``), and take ``rounds`` optimiser steps (one per generation
batch: TRL ``steps_per_generation=1, num_iterations=1``; ours ``miniBatches=1, ppoEpochs=1``) with
the same loss (TRL ``loss_type="dapo"`` = our ``token_mean``), clip 0.2, no KL (TRL's default beta 0),
AdamW at a constant learning rate, gradient clipping 1.0. Both are then scored on the same 200
held-out prompts with the same greedy decoding.

Printed: training wall time (ours: the rounds, without the held-out evaluations; TRL:
``trainer.train()``), completions per second, held-out accuracy before and after, and the ratios.

    .venv/bin/python benchmarks/grpo_vs_trl.py --policy DIR      # a checkpoint directory (HF files)
    .venv/bin/python benchmarks/grpo_vs_trl.py                    # trains the start with an sft stage first
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

import yaml

REPO = Path(__file__).resolve().parents[1]
SFT_STAGE = {  # the start when --policy is not given: the SFT stage of the rl recipes (pipelines/quickstart.yaml)
    "name": "sft", "type": "sft",
    "datasets": {"train": {"generator": "arithmetic", "size": 8000, "seed": 1}},
    "hyperparameters": {"learningRate": 0.0015, "lrScheduler": "constant", "batchSize": 64, "maxSteps": 600, "warmupSteps": 50,
                        "maxLength": 32, "checkpointEvery": 600, "logEvery": 50},
}
ARCHITECTURE = {"hiddenSize": 64, "layers": 2, "heads": 4, "maxPositions": 64, "seed": 0}


def _alignops_run(document: dict, workdir: Path) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    manifest = workdir / "job.yaml"
    manifest.write_text(yaml.safe_dump(document))
    done = subprocess.run([sys.executable, "-m", "alignops.cli.main", "run", str(manifest), "--workdir", str(workdir)],
                          capture_output=True, text=True)
    status = json.loads((workdir / document["metadata"]["name"] / "status.json").read_text())["status"]
    if status["phase"] != "Succeeded":
        sys.exit(f"{document['metadata']['name']} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return status


def train_start(workdir: Path) -> Path:
    status = _alignops_run({"apiVersion": "alignops.io/v1alpha1", "kind": "AlignmentJob", "metadata": {"name": "start"},
                            "spec": {"model": {"architecture": ARCHITECTURE}, "stages": [SFT_STAGE]}}, workdir / "start")
    return Path(status["stages"][0]["checkpointUri"][len("file://"):])


def prompts(count: int) -> list[dict]:
    from alignops.demo import generate

    return generate("prompts", count, seed=2)


def held_out() -> list[dict]:
    from alignops.demo import generate

    return generate("prompts", 200, seed=0, held_out=True)


def run_ours(policy: Path, records: list[dict], args, workdir: Path) -> dict:
    data = workdir / "prompts.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    stage = {
        "name": "grpo", "type": "rl", "algorithm": "grpo", "policy": {"uri": f"file://{policy}"},
        "datasets": {"train": {"uri": f"file://{data}"}, "eval": {"generator": "arithmetic", "size": 200}},
        "hyperparameters": {
            "rounds": args.rounds, "promptsPerRound": args.prompts, "samplesPerPrompt": args.samples,
            "maxNewTokens": args.max_new_tokens, "temperature": 1.0, "learningRate": args.lr, "lrScheduler": "constant",
            "warmupSteps": 0, "kl": {"beta": 0.0}, "lossAggregation": "token_mean", "clipLow": 0.2, "miniBatches": 1,
            "ppoEpochs": 1, "batchSize": args.prompts * args.samples, "maxGradNorm": 1.0, "evalEvery": args.rounds,
            "evalSize": 200, "generationBatchSize": args.prompts, "keepCheckpoints": 1,
        },
    }
    status = _alignops_run({"apiVersion": "alignops.io/v1alpha1", "kind": "AlignmentJob", "metadata": {"name": "ours"},
                            "spec": {"model": {"architecture": ARCHITECTURE}, "stages": [stage]}}, workdir)
    records_ = [json.loads(line) for line in (workdir / "ours" / "grpo" / "metrics.jsonl").read_text().splitlines()]
    first = records_[0]
    # wall time of the rounds: from the first round's start to the last round's record, less the
    # held-out evaluations (TRL's train() has none)
    first_round = sum(first.get(k, 0.0) for k in ("time_generate", "time_score", "time_train", "time_sync"))
    wall = records_[-1]["time"] - first["time"] + first_round - sum(r.get("time_eval", 0.0) for r in records_)
    metrics = status["stages"][0]["metrics"]
    return {"wall": wall, "before": metrics["accuracyBefore"], "after": metrics["accuracyAfter"],
            "reward_first": metrics["rewardFirst"], "reward_last": metrics["rewardLast"]}


def run_trl(policy: Path, records: list[dict], args, workdir: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from alignops.demo.arithmetic import is_correct
    from alignops.workloads.data.batching import encode_prompt
    from alignops.workloads.evaluation.generation import greedy_accuracy
    from alignops.workloads.models.loading import load_tokenizer

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(policy)
    model = AutoModelForCausalLM.from_pretrained(str(policy), dtype=torch.float32)
    # TRL tokenises the prompt text as it is; our stage puts bos first, so the text carries it
    dataset = Dataset.from_list([{"prompt": tokenizer.bos_token + r["prompt"], "answer": r["answer"]} for r in records])
    assert tokenizer(dataset[0]["prompt"])["input_ids"] == encode_prompt(tokenizer, records[0]["prompt"])
    rewards_seen: list[float] = []

    def exact_answer(completions, answer, **_):
        scores = [float(is_correct(c, a)) for c, a in zip(completions, answer)]
        rewards_seen.append(sum(scores) / len(scores))
        return scores

    config = GRPOConfig(
        output_dir=str(workdir / "trl"), use_cpu=True, bf16=False, report_to=[], save_strategy="no", logging_steps=args.rounds,
        per_device_train_batch_size=args.prompts * args.samples, num_generations=args.samples, steps_per_generation=1,
        num_iterations=1, max_steps=args.rounds, max_completion_length=args.max_new_tokens, learning_rate=args.lr,
        lr_scheduler_type="constant", warmup_steps=0, beta=0.0, loss_type="dapo", epsilon=0.2, temperature=1.0, top_k=0,
        top_p=1.0, max_grad_norm=1.0, seed=0, disable_dropout=True, dataloader_num_workers=0,
    )
    held = held_out()
    before = greedy_accuracy(model, tokenizer, held)
    trainer = GRPOTrainer(model=model, reward_funcs=exact_answer, args=config, train_dataset=dataset, processing_class=tokenizer)
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    after = greedy_accuracy(trainer.model, tokenizer, held)
    return {"wall": wall, "before": before, "after": after, "reward_first": rewards_seen[0], "reward_last": rewards_seen[-1]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", type=Path, help="start checkpoint (a Hugging Face directory); default: train one")
    parser.add_argument("--rounds", type=int, default=30, help="generation batches = optimiser steps")
    parser.add_argument("--prompts", type=int, default=32, help="prompts per generation batch")
    parser.add_argument("--samples", type=int, default=8, help="samples per prompt")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--max-new-tokens", type=int, default=5)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("ALIGNOPS_CPU_THREADS", "1")),
                        help="CPU threads of both trainers (our workloads read ALIGNOPS_CPU_THREADS)")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args(argv)
    os.environ["ALIGNOPS_CPU_THREADS"] = str(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="alignops-grpo-vs-trl-"))
    policy = args.policy or train_start(workdir)
    records = prompts(args.rounds * args.prompts)
    ours = run_ours(policy, records, args, workdir / "ours-run")
    trl = run_trl(policy, records, args, workdir)
    completions = args.rounds * args.prompts * args.samples
    print(f"\nGRPO, same start ({policy}), {args.rounds} steps x {args.prompts} prompts x {args.samples} samples "
          f"= {completions} completions, lr {args.lr}, maxNewTokens {args.max_new_tokens}, CPU threads {args.threads} each")
    rows = [
        ("training wall time (s)", ours["wall"], trl["wall"]),
        ("completions / s", completions / ours["wall"], completions / trl["wall"]),
        ("held-out accuracy before", ours["before"], trl["before"]),
        ("held-out accuracy after", ours["after"], trl["after"]),
        ("reward mean, first step", ours["reward_first"], trl["reward_first"]),
        ("reward mean, last step", ours["reward_last"], trl["reward_last"]),
    ]
    print(f"{'':28}{'alignops':>12}{'TRL':>12}{'alignops/TRL':>14}")
    for name, a, b in rows:
        ratio = f"{a / b:.2f}" if b else "-"
        print(f"{name:28}{a:>12.3f}{b:>12.3f}{ratio:>14}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
