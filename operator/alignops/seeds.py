"""Every random stream of a stage run is seeded from the stage's ``seed`` by one rule, so two runs
(a rerun, a resume, the other placement) draw the same numbers: ``derive_seed`` folds the stream's
coordinates into the seed, ``((seed * m1 + v1) * m2 + v2) ...``, each with its own multiplier.

Streams (coordinates, where):
- data order: (EPOCH, epoch); workloads/training/order.py, workloads/rl/prompts.py
- PPO mini-batches: (ROUND, round), (MINIBATCH_EPOCH, epoch); workloads/rl/update.py
- rollout sampling: (ROUND, round), (GENERATE_CALL, call); workloads/rl/sampling.py
- a self-training round's data order: (ROUND, round), (TRAINING_SET, i) for its i-th training set
  (ReST: Improve step i), then (EPOCH, epoch); workloads/stages/iterative.py
- demo record formats: (RECORD_FORMAT, 1); demo/arithmetic.py
"""

from __future__ import annotations

EPOCH = 100_003
ROUND = 1_000_003
MINIBATCH_EPOCH = 101
GENERATE_CALL = 1_000
RECORD_FORMAT = 7919
TRAINING_SET = 211


def derive_seed(seed: int, *coordinates: tuple[int, int]) -> int:
    """The seed of one stream: ``coordinates`` are (multiplier, value) pairs folded in order; the
    result fits a 63-bit generator seed."""
    value = seed
    for multiplier, coordinate in coordinates:
        value = value * multiplier + coordinate
    return value % (2**63)
