"""An LLM judge: a causal language model asked which of two responses to a prompt is better, from
a prompt template, its answer read by a regular expression (``online_dpo``'s ``judge``). The model
is an earlier stage's output, a checkpoint URI, or a Hugging Face Hub model id."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from alignops.api.common import StageRef

PLACEHOLDERS = ("{prompt}", "{response_a}", "{response_b}")
DEFAULT_TEMPLATE = (
    "Which of the two responses answers the prompt better: more correct, more helpful, more harmless?\n\n"
    "Prompt:\n{prompt}\n\nResponse A:\n{response_a}\n\nResponse B:\n{response_b}\n\n"
    "Answer with one letter, A or B."
)
# the answer's first word, after optional punctuation or "Response": A or B (case-sensitive: the
# article "a" is not a verdict)
DEFAULT_ANSWER_PATTERN = r"^\W*(?:Response\s+)?([AB])\b"


class JudgeSpec(StageRef):
    """Which model judges, the prompt it is given and how its answer is read. Exactly one of
    ``fromStage``, ``uri`` or ``hub`` (with ``revision``) names the model, as for any model input;
    a Hub model is read from the pod's Hugging Face cache (HF_HOME, the chart's hfCacheClaim)."""

    template: str = Field(
        DEFAULT_TEMPLATE, min_length=1, max_length=16384,
        description="The judge's prompt; {prompt}, {response_a} and {response_b} are replaced by the texts (other braces are kept). "
        "It goes through the judge tokenizer's chat template as a user message when the tokenizer has one.",
    )
    answer_pattern: str = Field(
        DEFAULT_ANSWER_PATTERN, min_length=1, max_length=256,
        description="Python regular expression searched in the judge's answer; its first group must capture A (or 1) for "
        "response A, B (or 2) for response B. Answers it does not match are counted (judgeUnparsed) and their pair skipped.",
    )
    max_new_tokens: int = Field(8, ge=1, le=4096, description="Longest judge answer, tokens (greedy decoding).")
    both_orders: bool = Field(
        False, description="Ask twice, the second time with the responses swapped; a pair counts only when both answers agree "
        "(cancels the judge's position bias; disagreements are counted as judgeInconsistent).",
    )

    @field_validator("template")
    @classmethod
    def _has_placeholders(cls, value: str) -> str:
        missing = [p for p in PLACEHOLDERS if p not in value]
        if missing:
            raise ValueError(f"the judge template must contain {', '.join(missing)} (where the prompt and the two responses go)")
        return value

    @field_validator("answer_pattern")
    @classmethod
    def _one_group(cls, value: str) -> str:
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        if compiled.groups < 1:
            raise ValueError("the answer pattern needs a group that captures the verdict, e.g. ([AB])")
        return value
