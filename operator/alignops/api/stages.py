"""Stage types. Each is one model with a literal ``type``; STAGE_TYPES says what each produces and
which inputs it takes, for the validator, the CRD's CEL rules and the planner."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from alignops.api.base import DNS_1035_LABEL, ApiModel
from alignops.api.common import Datasets, LoraAdapter, Resources, StageRef
from alignops.api.distributed import DistributedSettings
from alignops.api.hyperparameters import (
    PreferenceHyperparameters,
    RankHyperparameters,
    RewardHyperparameters,
    SftHyperparameters,
)
from alignops.api.generate import GENERATE_METHODS, GenerateHyperparameters
from alignops.api.iterative import OnlineDpoHyperparameters, RejectionSamplingHyperparameters, SpinHyperparameters
from alignops.api.judge import JudgeSpec
from alignops.api.rl import GROUP_ALGORITHMS, PAIR_ALGORITHMS, RL_ALGORITHMS, RlHyperparameters

# What a stage leaves behind, so references can be checked for the right kind.
Produces = Literal["policy", "rewardModel", "dataset"]


class StageBase(ApiModel):
    """Fields every stage type has."""

    name: str = Field(
        ..., min_length=1, max_length=20, pattern=DNS_1035_LABEL,
        description="Unique stage name (DNS-1035 label, at most 20 characters); names the stage's Jobs and storage keys.",
    )
    datasets: Datasets | None = Field(None, description="Training and held-out data.")
    resources: Resources = Field(default_factory=Resources, description="What each run of the stage asks of the cluster.")
    distributed: DistributedSettings | None = Field(
        None, description="DeepSpeed ZeRO settings when the stage trains on resources.gpus processes (default ZeRO-2 for more than one).",
    )
    backoff_limit: int = Field(2, ge=0, le=100, description="Failed attempts retried (from the last checkpoint) before the stage fails.")
    active_deadline_seconds: int | None = Field(None, ge=1, le=30 * 24 * 3600, description="Wall-clock limit of one attempt.")
    progress_deadline_seconds: int | None = Field(
        None, ge=30, le=7 * 24 * 3600, description="An attempt reporting no progress for this long is stalled and restarted."
    )


class RewardModelInput(ApiModel):
    """The stage types whose reward functions may score with a `reward` stage's model."""

    reward_model: StageRef | None = Field(
        None, description="A `reward` stage's model (or a sequence-classifier checkpoint URI) for the reward_model reward function.",
    )


class SftStage(StageBase):
    """Supervised fine-tuning on prompt/response data (chat `messages` or `prompt`/`completion`)."""

    type: Literal["sft"] = Field(..., description="Stage type.")
    policy: StageRef | None = Field(None, description="Model to fine-tune; defaults to spec.model.")
    adapter: LoraAdapter | None = Field(None, description="Train a LoRA adapter (peft) instead of every weight.")
    hyperparameters: SftHyperparameters = Field(default_factory=SftHyperparameters, description="Training settings.")


class RewardStage(StageBase):
    """A reward model: Hugging Face ``AutoModelForSequenceClassification`` (num_labels=1, score on the
    last non-pad token) initialised from a policy checkpoint or the base model, trained on pairwise
    (`pairs`) or K-wise (`rankings`) comparisons."""

    type: Literal["reward"] = Field(..., description="Stage type.")
    algorithm: Literal["bradley_terry", "plackett_luce"] | None = Field(
        None,
        description="Loss: bradley_terry (pairs; a ranking counts as all its pairs) or plackett_luce (K-wise; a pair is K=2). "
        "Default: plackett_luce for `rankings` data, bradley_terry otherwise.",
    )
    policy: StageRef | None = Field(None, description="Checkpoint whose transformer the reward model starts from; defaults to spec.model.")
    adapter: LoraAdapter | None = Field(None, description="Train a LoRA adapter (peft) instead of every weight.")
    hyperparameters: RewardHyperparameters = Field(default_factory=RewardHyperparameters, description="Training settings.")


# orpo's loss already holds the chosen NLL; kto's examples are unpaired (no chosen response)
NO_RPO_ALGORITHMS = ("orpo", "kto")
RPO_MESSAGE = "hyperparameters.rpoAlpha applies to dpo, cdpo, ipo and simpo only (orpo already trains on the chosen NLL; kto has no chosen response): remove it"


class PreferenceStage(StageBase):
    """Offline preference optimisation (DPO, cDPO, IPO, SimPO, ORPO on `pairs`; KTO on `unpaired`)
    against a frozen reference."""

    type: Literal["preference"] = Field(..., description="Stage type.")
    algorithm: Literal["dpo", "cdpo", "ipo", "simpo", "orpo", "kto"] = Field(
        "dpo", description="Preference loss: dpo, cdpo, ipo, simpo, orpo or kto."
    )
    policy: StageRef | None = Field(None, description="Model to optimise; defaults to spec.model.")
    reference: StageRef | None = Field(
        None, description="Frozen reference model; defaults to the policy's starting checkpoint (unused by simpo and orpo except for the KL metric)."
    )
    adapter: LoraAdapter | None = Field(None, description="Train a LoRA adapter (peft) instead of every weight.")
    hyperparameters: PreferenceHyperparameters = Field(default_factory=PreferenceHyperparameters, description="Training settings.")

    @model_validator(mode="after")
    def _consistent(self) -> "PreferenceStage":
        if self.hyperparameters.rpo_alpha != 0 and self.algorithm in NO_RPO_ALGORITHMS:
            raise ValueError(RPO_MESSAGE)
        return self


class RankStage(StageBase):
    """Ranking-based alignment (RRHF) over K responses per prompt (`rankings`, optional `scores`)."""

    type: Literal["rank"] = Field(..., description="Stage type.")
    algorithm: Literal["rrhf"] = Field("rrhf", description="Ranking loss: rrhf.")
    policy: StageRef | None = Field(None, description="Model to fine-tune; defaults to spec.model.")
    hyperparameters: RankHyperparameters = Field(default_factory=RankHyperparameters, description="Training settings.")


class RlStage(StageBase, RewardModelInput):
    """Online RL in rounds (generate -> score -> advantages -> update -> commit) on `prompts` records
    (``prompt``, and ``answer`` for the verifiers): PPO with a critic, GRPO, Dr. GRPO, RLOO,
    REINFORCE++ (with or without a group baseline) and ReMax."""

    type: Literal["rl"] = Field(..., description="Stage type.")
    algorithm: Literal[RL_ALGORITHMS] = Field(  # type: ignore[valid-type]
        "grpo",
        description="Algorithm: ppo (GAE with a critic), grpo, dr_grpo, rloo, reinforce_pp, reinforce_pp_baseline, remax "
        "(baseline: the reward of the greedy response), apa (squared loss of the log-ratio to the start against A / apaLambda, "
        "A group-normalised) or p3o (pairwise PPO on two responses per prompt).",
    )
    policy: StageRef | None = Field(None, description="Model to optimise; defaults to spec.model.")
    reference: StageRef | None = Field(None, description="Frozen reference of the KL penalty; defaults to the policy's starting checkpoint.")
    adapter: LoraAdapter | None = Field(None, description="Train a LoRA adapter (peft) instead of every weight.")
    hyperparameters: RlHyperparameters = Field(default_factory=RlHyperparameters, description="Rollout, reward and update settings.")

    @model_validator(mode="after")
    def _consistent(self) -> "RlStage":
        hp = self.hyperparameters
        if self.algorithm in GROUP_ALGORITHMS and hp.samples_per_prompt < 2:
            raise ValueError(f"algorithm {self.algorithm} compares the responses to one prompt: set hyperparameters.samplesPerPrompt >= 2")
        if self.algorithm in PAIR_ALGORITHMS and (hp.samples_per_prompt != 2 or hp.batch_size % 2):
            raise ValueError(f"algorithm {self.algorithm} compares pairs of responses: set hyperparameters.samplesPerPrompt: 2 "
                             "and an even batchSize")
        check_reward_inputs(self.reward_model, hp.rewards)
        if self.adapter is not None and hp.engine == "vllm":
            raise ValueError(ADAPTER_ENGINE_MESSAGE)
        return self


# an engine with its own copy of the weights would need the merged ones sent every round
ADAPTER_ENGINE_MESSAGE = "adapter: engine vllm does not sample from a LoRA policy yet; use hyperparameters.engine: transformers"


JUDGE_MESSAGE = "judge labels pairs for method ai_preferences only: remove it, or use method ai_preferences"
# a generate stage's judge reads its own template file (with a principle); the online_dpo prompt settings do not apply
JUDGE_PROMPT_FIELDS = {"template", "answer_pattern", "both_orders", "max_new_tokens"}
GENERATE_JUDGE_PROMPT_MESSAGE = ("judge.template, answerPattern, bothOrders and maxNewTokens apply to online_dpo; a generate stage's "
                                 "judge prompt is the ai_preferences.judge entry of hyperparameters.templates")


class GenerateStage(StageBase):
    """A model writes a dataset to storage for a later stage (``datasets.train.fromStage``):
    self_instruct, evol_instruct and self_align (instruction data), constitutional (SL-CAI
    revisions, sft data) or ai_preferences (RL-CAI / RLAIF pairs for a reward or preference stage).
    ``datasets.train`` holds the seed tasks or prompts (default: the package's seed tasks);
    ``datasets.eval``, when given, is kept out of the generated instructions (ROUGE-L)."""

    type: Literal["generate"] = Field(..., description="Stage type.")
    method: Literal[GENERATE_METHODS] = Field(  # type: ignore[valid-type]
        ..., description="self_instruct, evol_instruct, self_align, constitutional (SL-CAI) or ai_preferences (RL-CAI / RLAIF).",
    )
    policy: StageRef | None = Field(None, description="The model that writes; defaults to spec.model.")
    judge: JudgeSpec | None = Field(
        None, description="ai_preferences: the model that labels the pairs (fromStage, uri or hub); defaults to the policy. Its prompt "
        "is the ai_preferences.judge template (hyperparameters.templates), so judge.template and the answer settings stay unset.",
    )
    hyperparameters: GenerateHyperparameters = Field(default_factory=GenerateHyperparameters, description="Generation settings.")

    @model_validator(mode="after")
    def _judge_only_for_preferences(self) -> "GenerateStage":
        if self.judge is not None and self.method != "ai_preferences":
            raise ValueError(JUDGE_MESSAGE)
        if self.judge is not None and JUDGE_PROMPT_FIELDS & self.judge.model_fields_set:
            raise ValueError(GENERATE_JUDGE_PROMPT_MESSAGE)
        return self


# the paired losses of alignops.algos.PREFERENCE_LOSSES: what online_dpo and spin optimise on their pairs
PAIRED_PREFERENCE_ALGORITHMS = ("dpo", "cdpo", "ipo", "simpo", "orpo")
REWARD_MODEL_UNUSED = "rewardModel is given but no reward in hyperparameters.rewards uses it; add {name: reward_model}"
REWARD_MODEL_MISSING = "reward reward_model needs the rewardModel input (e.g. rewardModel: {fromStage: <a reward stage>})"


def check_reward_inputs(reward_model: StageRef | None, rewards) -> None:
    """A reward_model reward needs the rewardModel input, and the input needs a reward that uses it."""
    names = {term.name for term in rewards or []}
    if "reward_model" in names and reward_model is None:
        raise ValueError(REWARD_MODEL_MISSING)
    if reward_model is not None and rewards is not None and "reward_model" not in names:
        raise ValueError(REWARD_MODEL_UNUSED)


class RejectionSamplingStage(StageBase, RewardModelInput):
    """Rejection-sampling fine-tuning in rounds on `prompts` records: sample ``samplesPerPrompt``
    responses per prompt with the current policy, score them with the reward functions (a verifier or a
    `reward` stage's model), keep the best ``topK`` per prompt (raft) or, for each Improve step, those
    at or above its threshold (rest), and fine-tune on the kept responses with the SFT loss."""

    type: Literal["rejection_sampling"] = Field(..., description="Stage type.")
    algorithm: Literal["raft", "rest"] = Field(
        "raft", description="raft: the best topK responses per prompt each round; rest: one Grow set per round, then one Improve "
        "step per threshold in hyperparameters.thresholds.",
    )
    policy: StageRef | None = Field(None, description="Model to fine-tune; defaults to spec.model.")
    hyperparameters: RejectionSamplingHyperparameters = Field(
        default_factory=RejectionSamplingHyperparameters, description="Sampling, selection and training settings.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> "RejectionSamplingStage":
        hp = self.hyperparameters
        if self.algorithm == "rest" and hp.thresholds is None:
            raise ValueError(REST_NEEDS_THRESHOLDS)
        if self.algorithm == "raft" and hp.thresholds is not None:
            raise ValueError(RAFT_NO_THRESHOLDS)
        if self.algorithm == "rest" and ({"top_k", "min_reward"} & hp.model_fields_set):
            raise ValueError(REST_NO_TOP_K)
        check_reward_inputs(self.reward_model, hp.rewards)
        return self


REST_NEEDS_THRESHOLDS = "algorithm rest needs hyperparameters.thresholds (one reward threshold per Improve step)"
RAFT_NO_THRESHOLDS = "hyperparameters.thresholds applies to algorithm rest; raft keeps the best topK (and minReward)"
REST_NO_TOP_K = "hyperparameters.topK and minReward apply to algorithm raft; rest keeps what reaches each threshold"


class OnlineDpoStage(StageBase, RewardModelInput):
    """Online DPO (OAIF, iterative DPO) in rounds on `prompts` records: sample ``samplesPerPrompt``
    responses per prompt with the current policy, let a judge pick the better of each pair (an LLM
    `judge`, or the reward functions: the best against the worst sample of a prompt), then take
    ``stepsPerRound`` steps of a DPO-family loss on the round's fresh pairs."""

    type: Literal["online_dpo"] = Field(..., description="Stage type.")
    algorithm: Literal[PAIRED_PREFERENCE_ALGORITHMS] = Field(  # type: ignore[valid-type]
        "dpo", description="Preference loss on the judged pairs: dpo, cdpo, ipo, simpo or orpo.",
    )
    policy: StageRef | None = Field(None, description="Model to optimise; defaults to spec.model.")
    reference: StageRef | None = Field(
        None, description="Frozen reference model; defaults to the policy's starting checkpoint (see hyperparameters.syncReference).",
    )
    judge: JudgeSpec | None = Field(
        None, description="An LLM judge that picks the better of two responses (instead of the reward functions).",
    )
    hyperparameters: OnlineDpoHyperparameters = Field(
        default_factory=OnlineDpoHyperparameters, description="Sampling, judging and update settings.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> "OnlineDpoStage":
        hp = self.hyperparameters
        if hp.samples_per_prompt < 2:
            raise ValueError(ONLINE_DPO_PAIRS)
        if hp.rpo_alpha != 0 and self.algorithm in NO_RPO_ALGORITHMS:
            raise ValueError(RPO_MESSAGE)
        if self.judge is not None and (hp.rewards is not None or self.reward_model is not None):
            raise ValueError(JUDGE_OR_REWARDS)
        check_reward_inputs(self.reward_model, hp.rewards)
        return self


ONLINE_DPO_PAIRS = "hyperparameters.samplesPerPrompt must be >= 2: the judge compares responses to the same prompt"
JUDGE_OR_REWARDS = "judge and the reward functions (hyperparameters.rewards, rewardModel) are two kinds of judge; use one"


class SpinStage(StageBase):
    """SPIN (self-play fine-tuning) on `sft` records, in iterations (rounds): the policy answers the
    round's SFT prompts; each answer that differs from the SFT response is the rejected side of a pair
    whose chosen side is the SFT response, and the policy as it starts the iteration is the reference."""

    type: Literal["spin"] = Field(..., description="Stage type.")
    algorithm: Literal[PAIRED_PREFERENCE_ALGORITHMS] = Field(  # type: ignore[valid-type]
        "dpo", description="Loss on (SFT response, own answer): dpo is SPIN's logistic loss; cdpo, ipo, simpo or orpo.",
    )
    policy: StageRef | None = Field(None, description="Model to fine-tune (an SFT model, as in the paper); defaults to spec.model.")
    hyperparameters: SpinHyperparameters = Field(default_factory=SpinHyperparameters, description="Sampling and update settings.")

    @model_validator(mode="after")
    def _consistent(self) -> "SpinStage":
        if self.hyperparameters.rpo_alpha != 0 and self.algorithm in NO_RPO_ALGORITHMS:
            raise ValueError(RPO_MESSAGE)
        return self


def _no_rpo_rule() -> tuple[str, str]:
    return ("!has(self.hyperparameters) || !has(self.hyperparameters.rpoAlpha) || self.hyperparameters.rpoAlpha == 0.0"
            " || !has(self.algorithm) || !(self.algorithm in [" + ", ".join(f"'{a}'" for a in NO_RPO_ALGORITHMS) + "])",
            RPO_MESSAGE)


def _reward_model_rules() -> tuple[tuple[str, str], ...]:
    return (
        ("!has(self.hyperparameters) || !has(self.hyperparameters.rewards) || !self.hyperparameters.rewards.exists(r, r.name == 'reward_model')"
         " || has(self.rewardModel)",
         "the reward_model reward needs the rewardModel input"),
        ("!has(self.rewardModel) || !has(self.hyperparameters) || !has(self.hyperparameters.rewards)"
         " || self.hyperparameters.rewards.exists(r, r.name == 'reward_model')",
         "rewardModel is given but no reward in hyperparameters.rewards uses it"),
    )


@dataclass(frozen=True)
class StageType:
    model: type[StageBase]
    produces: Produces
    # reference field name -> kinds of stage output it accepts
    inputs: dict[str, tuple[Produces, ...]]
    algorithms: tuple[str, ...] = ()
    default_algorithm: str | None = None
    # which dataset format the stage reads, for generators and sniffing
    dataset_format: str = "sft"
    # processes (GPUs x nodes) one run may use: every trained type runs DeepSpeed across them
    max_gpus: int = 64
    # (CEL rule on the stage object, message): within-stage checks the CRD makes for this type only
    rules: tuple[tuple[str, str], ...] = ()


STAGE_TYPES: dict[str, StageType] = {
    "sft": StageType(model=SftStage, produces="policy", inputs={"policy": ("policy",)}, dataset_format="sft"),
    # reward: no default algorithm; the workload picks by the data (plackett_luce for rankings)
    "reward": StageType(model=RewardStage, produces="rewardModel", inputs={"policy": ("policy",)},
                        algorithms=("bradley_terry", "plackett_luce"), dataset_format="pairs"),
    # preference: kto reads `unpaired` by default (the workload picks the format per algorithm)
    "preference": StageType(model=PreferenceStage, produces="policy", inputs={"policy": ("policy",), "reference": ("policy",)},
                            algorithms=("dpo", "cdpo", "ipo", "simpo", "orpo", "kto"), default_algorithm="dpo",
                            dataset_format="pairs",
                            rules=(_no_rpo_rule(),)),
    "rank": StageType(model=RankStage, produces="policy", inputs={"policy": ("policy",)},
                      algorithms=("rrhf",), default_algorithm="rrhf", dataset_format="rankings"),
    "generate": StageType(model=GenerateStage, produces="dataset", inputs={"policy": ("policy",), "judge": ("policy",)},
                          dataset_format="prompts",
                          rules=(("!has(self.judge) || self.method == 'ai_preferences'", JUDGE_MESSAGE),
                                 ("!has(self.judge) || (!has(self.judge.template) && !has(self.judge.answerPattern)"
                                  " && !has(self.judge.bothOrders) && !has(self.judge.maxNewTokens))", GENERATE_JUDGE_PROMPT_MESSAGE))),
    "rl": StageType(
        model=RlStage, produces="policy",
        inputs={"policy": ("policy",), "reference": ("policy",), "reward_model": ("rewardModel",)},
        algorithms=RL_ALGORITHMS, default_algorithm="grpo", dataset_format="prompts",
        rules=(
            ("!has(self.hyperparameters) || !has(self.hyperparameters.samplesPerPrompt) || self.hyperparameters.samplesPerPrompt >= 2"
             " || (has(self.algorithm) && !(self.algorithm in [" + ", ".join(f"'{a}'" for a in GROUP_ALGORITHMS) + "]))",
             "hyperparameters.samplesPerPrompt must be >= 2 for the group algorithms (" + ", ".join(GROUP_ALGORITHMS) + ")"),
            ("!has(self.algorithm) || !(self.algorithm in [" + ", ".join(f"'{a}'" for a in PAIR_ALGORITHMS) + "])"
             " || (has(self.hyperparameters) && has(self.hyperparameters.samplesPerPrompt) && self.hyperparameters.samplesPerPrompt == 2"
             " && (!has(self.hyperparameters.batchSize) || self.hyperparameters.batchSize % 2 == 0))",
             "the pairwise algorithms (" + ", ".join(PAIR_ALGORITHMS) + ") need hyperparameters.samplesPerPrompt: 2 and an even batchSize"),
            *_reward_model_rules(),
            ("!has(self.adapter) || !has(self.hyperparameters) || !has(self.hyperparameters.engine)"
             " || self.hyperparameters.engine != 'vllm'", ADAPTER_ENGINE_MESSAGE),
        ),
    ),
    "rejection_sampling": StageType(
        model=RejectionSamplingStage, produces="policy", inputs={"policy": ("policy",), "reward_model": ("rewardModel",)},
        algorithms=("raft", "rest"), default_algorithm="raft", dataset_format="prompts",
        rules=(
            ("!has(self.algorithm) || self.algorithm != 'rest' || (has(self.hyperparameters) && has(self.hyperparameters.thresholds))",
             REST_NEEDS_THRESHOLDS),
            ("(has(self.algorithm) && self.algorithm == 'rest') || !has(self.hyperparameters) || !has(self.hyperparameters.thresholds)",
             RAFT_NO_THRESHOLDS),
            ("!has(self.algorithm) || self.algorithm != 'rest' || !has(self.hyperparameters)"
             " || (!has(self.hyperparameters.topK) && !has(self.hyperparameters.minReward))",
             REST_NO_TOP_K),
            *_reward_model_rules(),
        ),
    ),
    "online_dpo": StageType(
        model=OnlineDpoStage, produces="policy",
        inputs={"policy": ("policy",), "reference": ("policy",), "reward_model": ("rewardModel",), "judge": ("policy",)},
        algorithms=PAIRED_PREFERENCE_ALGORITHMS, default_algorithm="dpo", dataset_format="prompts",
        rules=(
            ("!has(self.hyperparameters) || !has(self.hyperparameters.samplesPerPrompt) || self.hyperparameters.samplesPerPrompt >= 2",
             ONLINE_DPO_PAIRS),
            ("!has(self.judge) || (!has(self.rewardModel) && (!has(self.hyperparameters) || !has(self.hyperparameters.rewards)))",
             JUDGE_OR_REWARDS),
            _no_rpo_rule(),
            *_reward_model_rules(),
        ),
    ),
    "spin": StageType(model=SpinStage, produces="policy", inputs={"policy": ("policy",)},
                      algorithms=PAIRED_PREFERENCE_ALGORITHMS, default_algorithm="dpo", dataset_format="sft",
                      rules=(_no_rpo_rule(),)),
}

Stage = Annotated[Union[tuple(t.model for t in STAGE_TYPES.values())], Field(discriminator="type")]  # type: ignore[valid-type]
