"""Settings of the ``generate`` stage type: a model writes a dataset (Self-Instruct, Evol-Instruct,
Self-Align, Constitutional AI's SL-CAI revisions, RL-CAI / RLAIF preference labels) for a later
stage's ``datasets.train.fromStage``. Formulas and papers: docs/algorithms.md.

Method names are the keys of ``alignops.workloads.generate.methods.GENERATE_METHODS`` (the API
cannot import it: it imports torch); a test keeps the two lists in step.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from alignops.api.base import ApiModel
from alignops.api.common import URI_PATTERN
from alignops.api.rl import RewardTerm, check_vllm_temperature

GENERATE_METHODS: tuple[str, ...] = ("self_instruct", "evol_instruct", "self_align", "constitutional", "ai_preferences")
# method -> the record format of the dataset it writes (what a consuming stage must read)
GENERATED_FORMAT: dict[str, str] = {
    "self_instruct": "sft", "evol_instruct": "sft", "self_align": "sft", "constitutional": "sft", "ai_preferences": "pairs",
}


class GenerateHyperparameters(ApiModel):
    """How much to generate, how to sample, and how to filter. The files (templates, principles,
    exemplars, seed tasks) default to the ones shipped in the package (alignops/workloads/generate/
    defaults/); point at your own to replace them."""

    size: int = Field(200, ge=1, le=1_000_000, description="Records to write at most (generation stops when it has them).")
    rounds: int = Field(20, ge=1, le=100_000, description="Generation rounds at most; each builds promptsPerRound prompts.")
    prompts_per_round: int = Field(32, ge=1, le=100_000, description="Prompts (instructions, seeds or pairs to judge) per round.")
    samples_per_prompt: int = Field(
        8, ge=1, le=1024,
        description="Responses sampled per instruction; the first the verifier accepts is kept (ai_preferences: 2 per prompt are compared).",
    )
    seed_tasks_per_prompt: int = Field(
        8, ge=1, le=64, description="self_instruct: tasks shown in each instruction-writing prompt (the paper: 6 seed + 2 generated).",
    )
    evolutions: int = Field(1, ge=1, le=10, description="evol_instruct: evolution steps, each on the previous step's survivors.")
    temperature: float = Field(1.0, gt=0, le=10, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling probability mass.")
    max_new_tokens: int = Field(64, ge=1, le=131072, description="Longest generated text (instruction, answer, critique, ...), tokens.")
    max_prompt_length: int = Field(512, ge=1, le=131072, description="Longer prompts keep their last tokens.")
    rouge_threshold: float = Field(
        0.7, gt=0, le=1,
        description="An instruction whose ROUGE-L F to any in the pool (or to a held-out prompt of datasets.eval) reaches this is dropped.",
    )
    min_instruction_chars: int = Field(3, ge=1, le=100_000, description="Shorter generated instructions are dropped.")
    max_instruction_chars: int = Field(2000, ge=1, le=1_000_000, description="Longer generated instructions are dropped.")
    verifier: list[RewardTerm] | None = Field(
        None, max_length=8,
        description="Reward functions (those of the rl stage) a generated answer must pass: kept when their weighted sum reaches "
        "verifierThreshold. Unset: every parsable answer is kept.",
    )
    verifier_threshold: float = Field(1.0, ge=-1000, le=1000, description="Weighted verifier reward an answer needs to be kept.")
    templates: str | None = Field(
        None, max_length=1024, pattern=URI_PATTERN, description="YAML file of prompt templates (keys per method); default: the package's.",
    )
    principles: str | None = Field(
        None, max_length=1024, pattern=URI_PATTERN,
        description="YAML list of principles ({name, critique, revision, preference}); default: the package's.",
    )
    exemplars: str | None = Field(
        None, max_length=1024, pattern=URI_PATTERN, description="self_align: YAML list of {instruction, response} exemplars; default: the package's.",
    )
    seed_tasks: str | None = Field(
        None, max_length=1024, pattern=URI_PATTERN,
        description="JSON lines of seed tasks ({prompt}) when datasets.train is not given; default: the package's.",
    )
    engine: Literal["transformers", "vllm"] = Field("transformers", description="Rollout engine that samples the texts.")
    gpu_memory_utilization: float = Field(0.3, gt=0, le=1, description="vllm: share of GPU memory the engine may take.")
    generation_batch_size: int = Field(64, ge=1, le=65536, description="Prompts per call of the rollout engine (transformers).")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="bf16 autocast on GPUs that support it when auto.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of every draw (seed tasks, principles, sampling).")

    @model_validator(mode="after")
    def _vllm_temperature(self) -> "GenerateHyperparameters":
        check_vllm_temperature(self.engine, self.temperature)
        return self
