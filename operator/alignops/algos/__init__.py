"""alignops.algos: the tensor math of alignment training (no I/O, only torch).

Functions are small and pure; families of interchangeable algorithms are looked up by name in
registries (``PREFERENCE_LOSSES``, ``REWARD_LOSSES``, ``ADVANTAGE_ESTIMATORS``, ``POLICY_LOSSES``,
``KL_ESTIMATORS``, ``AGGREGATION_MODES``). Formulas and the differences between verl,
OpenRLHF and TRL are documented in each docstring and in docs/algorithms.md.
"""

from .advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageInputs,
    AdvantageOutput,
    discounted_returns,
    dr_grpo,
    gae,
    grpo,
    reinforce_pp,
    reinforce_pp_baseline,
    remax,
    rloo,
)
from .aggregation import AGGREGATION_MODES, aggregate_loss
from .groups import GroupStats, contiguous_group_ids, group_min_max, group_stats
from .kl import (
    KL_ESTIMATORS,
    LOG_RATIO_CLAMP,
    AdaptiveKLController,
    FixedKLController,
    k1,
    k2,
    k3,
    kl_shaped_token_rewards,
    masked_kl,
)
from .logprobs import (
    IGNORE_INDEX,
    entropy_from_logits,
    last_valid_index,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    next_token_logprobs,
    place_on_last_token,
    sequence_logprob,
    token_logprobs,
)
from .policy_losses import (
    POLICY_LOSSES,
    PolicyLossInputs,
    PolicyLossOutput,
    PolicyLossTraits,
    apa_loss,
    clipped_value_loss,
    p3o_loss,
    pair_partners,
    ppo_clip_loss,
)
from .preference_losses import (
    PREFERENCE_LOSSES,
    KTOInputs,
    LossOutput,
    PreferenceInputs,
    PreferenceLossTraits,
    PreferenceOptions,
    cdpo,
    dpo,
    ipo,
    kto,
    kto_reference_point,
    orpo,
    simpo,
)
from .ranking_losses import RANKING_LOSSES, best_response_index, rrhf
from .registry import Registry, UnknownNameError
from .reward_losses import REWARD_LOSSES, RewardLossTraits, bradley_terry, plackett_luce
from .rewards import kimi_length_reward
from .linear_logprobs import linear_token_logprobs
from .selection import best_worst_pairs, raft_keep, rest_keep
from .sft import lm_loss_from_logprobs, masked_lm_loss

__all__ = [
    # registries
    "Registry",
    "UnknownNameError",
    "ADVANTAGE_ESTIMATORS",
    "AGGREGATION_MODES",
    "KL_ESTIMATORS",
    "PREFERENCE_LOSSES",
    "RANKING_LOSSES",
    "REWARD_LOSSES",
    "PreferenceLossTraits",
    "RewardLossTraits",
    # log-probs and masked statistics
    "IGNORE_INDEX",
    "token_logprobs",
    "next_token_logprobs",
    "sequence_logprob",
    "masked_sum",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "entropy_from_logits",
    "last_valid_index",
    "place_on_last_token",
    "linear_token_logprobs",
    # SFT
    "masked_lm_loss",
    "lm_loss_from_logprobs",
    # reward models
    "bradley_terry",
    "plackett_luce",
    # preference optimisation
    "PreferenceInputs",
    "PreferenceOptions",
    "KTOInputs",
    "LossOutput",
    "dpo",
    "cdpo",
    "ipo",
    "simpo",
    "orpo",
    "kto",
    "kto_reference_point",
    # ranking
    "rrhf",
    "best_response_index",
    # groups and advantages
    "GroupStats",
    "contiguous_group_ids",
    "group_stats",
    "group_min_max",
    "AdvantageInputs",
    "AdvantageOutput",
    "discounted_returns",
    "gae",
    "grpo",
    "dr_grpo",
    "rloo",
    "reinforce_pp",
    "reinforce_pp_baseline",
    "remax",
    "kimi_length_reward",
    # policy / value losses, KL
    "POLICY_LOSSES",
    "PolicyLossInputs",
    "PolicyLossTraits",
    "PolicyLossOutput",
    "ppo_clip_loss",
    "p3o_loss",
    "pair_partners",
    "clipped_value_loss",
    "apa_loss",
    "LOG_RATIO_CLAMP",
    "k1",
    "k2",
    "k3",
    "kl_shaped_token_rewards",
    "masked_kl",
    "FixedKLController",
    "AdaptiveKLController",
    # aggregation
    "aggregate_loss",
    # self-training selection (rejection sampling, online DPO)
    "raft_keep",
    "rest_keep",
    "best_worst_pairs",
]
