"""Every random stream of a stage run is seeded from the stage's ``seed`` by one rule, so two runs
(a rerun, a resume, the other placement) draw the same numbers: ``derive_seed`` folds the stream's
coordinates into the seed, ``((seed * m1 + v1) * m2 + v2) ...``, each with its own multiplier.

Streams (coordinates, where):
- data order: (EPOCH, epoch); workloads/training/order.py, workloads/rl/prompts.py
- PPO mini-batches: (ROUND, round), (MINIBATCH_EPOCH, epoch); workloads/rl/update.py
- rollout sampling, one seed per prompt: (ROUND, round), (GENERATE_CALL, pass), (PROMPT, index),
  (SAMPLE, 0); pass 0 samples the groups, pass 1 ReMax's greedy baseline; workloads/rl/sampling.py.
  vLLM gives the j-th sample of a request the seed + j: SAMPLE > samplesPerPrompt keeps every
  sample's seed distinct from every other prompt's.
- a self-training round's data order: (ROUND, round), (TRAINING_SET, i) for its i-th training set
  (ReST: Improve step i), then (EPOCH, epoch); workloads/stages/iterative.py
- demo record formats: (RECORD_FORMAT, 1); demo/arithmetic.py
- a process's random streams on a resume at another process count: (PROCESS, rank), (STEP, step);
  workloads/training/state.py
"""

from __future__ import annotations

EPOCH = 100_003
ROUND = 1_000_003
MINIBATCH_EPOCH = 101
GENERATE_CALL = 1_000
PROMPT = 1_000_033
SAMPLE = 1_031  # > 1024, the most samplesPerPrompt allows
RECORD_FORMAT = 7919
PROCESS = 1_009
STEP = 10_007
TRAINING_SET = 211


def derive_seed(seed: int, *coordinates: tuple[int, int]) -> int:
    """The seed of one stream: ``coordinates`` are (multiplier, value) pairs folded in order; the
    result fits a 63-bit generator seed."""
    value = seed
    for multiplier, coordinate in coordinates:
        value = value * multiplier + coordinate
    return value % (2**63)
