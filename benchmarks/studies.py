"""The method list's two studies, reproduced on the demo task (a benchmark: about half an hour on 2 cores).

- Online against offline alignment (Tang et al. 2024, "Understanding the performance gap between
  online and offline alignment algorithms", arXiv:2405.08448): online methods that learn from the
  current policy's own samples (``rl`` grpo, ``online_dpo``) against DPO on pairs collected before
  training.
- PPO against DPO (Xu et al. 2024, "Is DPO superior to PPO for LLM alignment?", arXiv:2404.10719).

Every method starts from the same SFT checkpoint (trained once, as in pipelines/quickstart.yaml),
sees the same prompts and the same number of sampled responses (``ROUNDS`` x ``PROMPTS`` prompts,
``SAMPLES`` responses each), is judged by the same signal (the exact-answer verifier) and takes the
same number of optimiser steps (``STEPS_PER_ROUND`` per round):

  grpo         rl/grpo: each round samples the current policy, group-normalised advantages
  ppo          rl/ppo: the same samples, GAE with a critic (InstructGPT's recipe; no reward model)
  online_dpo   online_dpo: each round the best against the worst of the current policy's samples
  offline_dpo  online_dpo with one round: every sample drawn from the SFT policy first, labelled by
               the same verifier, then the same steps (the pre-collected pairs of Tang et al.)
  dataset_dpo  preference/dpo on the dataset's own pairs (right sum against a near miss; the
               human-labelled data of Xu et al.): as many pairs as prompts, the same steps

The figure is the held-out greedy accuracy gain (``accuracyAfter - accuracyBefore``) of each
method, over ``--seeds`` seeds (the stage seed: sampling, data order); the table shows each seed,
the mean and the standard deviation, then the direction found for each comparison: the mean
difference and in how many seeds it holds.

    flock /work/heavy.lock .venv/bin/python benchmarks/studies.py                 # 3 seeds
    flock /work/heavy.lock .venv/bin/python benchmarks/studies.py --seeds 1 --methods grpo online_dpo
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
from pathlib import Path

import yaml
from recipe_runs import fmt, print_aligned, run_recipe

REPO = Path(__file__).resolve().parents[1]
ROUNDS, PROMPTS, SAMPLES, STEPS_PER_ROUND = 20, 32, 8, 2
MODEL = {"architecture": {"hiddenSize": 64, "layers": 2, "heads": 4, "maxPositions": 64, "seed": 0}}
SFT = {"name": "sft", "type": "sft", "datasets": {"train": {"generator": "arithmetic", "size": 8000, "seed": 1}},
       "hyperparameters": {"learningRate": 0.0015, "lrScheduler": "constant", "batchSize": 64, "maxSteps": 600,
                           "warmupSteps": 50, "maxLength": 32, "checkpointEvery": 600, "logEvery": 50}}
PROMPT_DATA = {"train": {"generator": "arithmetic", "size": 4000, "seed": 2}}
SAMPLING = {"promptsPerRound": PROMPTS, "samplesPerPrompt": SAMPLES, "maxNewTokens": 5, "evalEvery": ROUNDS}
CONSTANT = {"lrScheduler": "constant", "warmupSteps": 0}
DPO = {"beta": 0.1, "learningRate": 0.0001, "batchSize": 32, **CONSTANT}
VERIFIER = [{"name": "exact_answer"}]

METHODS: dict[str, tuple[str, dict]] = {
    "grpo": ("online, group advantages", {
        "type": "rl", "algorithm": "grpo", "datasets": PROMPT_DATA,
        "hyperparameters": {"rounds": ROUNDS, **SAMPLING, "rewards": VERIFIER, "kl": {"beta": 0.01}, "learningRate": 0.0001,
                            "miniBatches": STEPS_PER_ROUND, "batchSize": 128, **CONSTANT}}),
    "ppo": ("online, GAE and a critic", {
        "type": "rl", "algorithm": "ppo", "datasets": PROMPT_DATA,
        "hyperparameters": {"rounds": ROUNDS, **SAMPLING, "rewards": VERIFIER, "kl": {"beta": 0.01}, "learningRate": 0.0001,
                            "critic": {"learningRate": 0.001}, "miniBatches": STEPS_PER_ROUND, "batchSize": 128, **CONSTANT}}),
    "online_dpo": ("online, best vs worst sample", {
        "type": "online_dpo", "datasets": PROMPT_DATA,
        "hyperparameters": {"rounds": ROUNDS, **SAMPLING, "rewards": VERIFIER, "stepsPerRound": STEPS_PER_ROUND, **DPO}}),
    "offline_dpo": ("offline, pairs from the SFT policy", {
        "type": "online_dpo", "datasets": PROMPT_DATA,
        "hyperparameters": {"rounds": 1, **SAMPLING, "promptsPerRound": ROUNDS * PROMPTS, "rewards": VERIFIER,
                            "stepsPerRound": ROUNDS * STEPS_PER_ROUND, "evalEvery": 1, **DPO}}),
    "dataset_dpo": ("offline, the dataset's pairs", {
        "type": "preference", "algorithm": "dpo", "datasets": {"train": {**PROMPT_DATA["train"], "size": ROUNDS * PROMPTS, "format": "pairs"}},
        "hyperparameters": {**DPO, "maxSteps": ROUNDS * STEPS_PER_ROUND, "maxLength": 32, "checkpointEvery": 1000}}),
}
COMPARISONS = [  # (study, better?, than)
    ("online vs offline", "online_dpo", "offline_dpo"),
    ("online vs offline", "grpo", "offline_dpo"),
    ("online vs offline", "online_dpo", "dataset_dpo"),
    ("PPO vs DPO", "ppo", "offline_dpo"),
    ("PPO vs DPO", "ppo", "dataset_dpo"),
]


def job(name: str, model: dict, stages: list[dict]) -> dict:
    return {"apiVersion": "alignops.io/v1alpha1", "kind": "AlignmentJob", "metadata": {"name": name},
            "spec": {"model": model, "stages": stages}}


def run_job(document: dict, workdir: Path) -> dict:
    """The job's status stages by name; a failed stage is reported and left out."""
    path = workdir / f"{document['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    _, status, wall = run_recipe(path, workdir)
    stages = {s["name"]: s for s in status.get("stages", [])}
    print(f"  {document['metadata']['name']}: {status.get('phase', 'no status')} in {wall:.0f} s", flush=True)
    return stages


def sft_start(workdir: Path) -> str:
    stages = run_job(job("study-sft", MODEL, [SFT]), workdir)
    sft = stages.get("sft", {})
    if sft.get("phase") != "Succeeded":
        sys.exit("the SFT start failed; nothing to compare")
    print(f"  SFT start: held-out accuracy {fmt(sft['metrics'].get('accuracyAfter'))}", flush=True)
    return sft["checkpointUri"]


def gain(method: str, seed: int, start: str, workdir: Path) -> float | None:
    stage = copy.deepcopy(METHODS[method][1])
    stage["name"] = "m"
    stage["hyperparameters"]["seed"] = seed
    name = f"study-{method.replace('_', '-')}-{seed}"
    observed = run_job(job(name, {"uri": start}, [stage]), workdir).get("m", {})
    metrics = observed.get("metrics", {})
    # the preference stage's `accuracy` is pairwise; its greedy answer accuracy is `answerAccuracy`
    key = "answerAccuracy" if "answerAccuracyAfter" in metrics else "accuracy"
    if observed.get("phase") != "Succeeded" or f"{key}After" not in metrics:
        return None
    return metrics[f"{key}After"] - metrics[f"{key}Before"]


def signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="alignops-studies-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"budget per method: {ROUNDS} rounds x {PROMPTS} prompts x {SAMPLES} samples = {ROUNDS * PROMPTS * SAMPLES} "
          f"responses, {ROUNDS * STEPS_PER_ROUND} optimiser steps; workdir {workdir}", flush=True)
    start = sft_start(workdir)
    seeds = list(range(args.seeds))
    gains = {m: [gain(m, s, start, workdir) for s in seeds] for m in args.methods}

    print("\nheld-out accuracy gain over the SFT start (greedy, 200 held-out sums)\n")
    table = []
    for method, values in gains.items():
        done = [v for v in values if v is not None]
        mean = statistics.fmean(done) if done else None
        std = statistics.stdev(done) if len(done) > 1 else None
        table.append([method, METHODS[method][0], *(signed(v) for v in values), signed(mean), fmt(std)])
    print_aligned(("method", "learns from", *(f"seed {s}" for s in seeds), "mean", "std"), table)

    print("\ndirection found (mean difference of the gains; seeds in which it holds)\n")
    rows = []
    for study, a, b in COMPARISONS:
        if a not in gains or b not in gains:
            continue
        pairs = [(x, y) for x, y in zip(gains[a], gains[b]) if x is not None and y is not None]
        if not pairs:
            continue
        difference = statistics.fmean(x - y for x, y in pairs)
        wins = sum(x > y for x, y in pairs)
        verdict = f"{a} better" if difference > 0 else f"{b} better" if difference < 0 else "even"
        rows.append([study, f"{a} - {b}", signed(difference), f"{wins}/{len(pairs)}", verdict])
    print_aligned(("study", "comparison", "mean", "a > b", "direction"), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
