"""An LLM judge (``online_dpo``'s ``judge``): a causal language model is shown a prompt and two
responses through a template (``alignops.api.judge.JudgeSpec``) and answers which is better; a
regular expression reads the verdict from its greedy answer. Answers the expression does not match
are counted and their pair is skipped, never guessed.

What it is good for depends entirely on the judge model: the mechanics (templates filled, answers
parsed, unparseable ones counted) run with any causal LM, down to the tiny ones of the tests, but a
judge whose verdicts should be trusted needs a capable instruction-following model (OAIF used
PaLM 2-L), on a GPU.

``JudgeScorer`` plugs the judge into the rl stage's ``RoundSampler`` in place of the reward
functions: the responses to one prompt are judged in consecutive pairs (1 against 2, 3 against 4,
...), the winner scores 1 and the loser 0; a pair without a verdict scores 0.5 on both sides (a tie,
which no training pair is made from). Per response it also reports ``judge_unparsed`` and
``judge_inconsistent`` (1 on both rows of such a pair), so the counts survive in the committed
rollouts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch

from alignops.api.judge import JudgeSpec
from alignops.workloads.context import ConfigError, RunContext
from alignops.workloads.evaluation.generation import greedy_completions
from alignops.workloads.models.policy import load_model
from alignops.workloads.rl.rewards import ScoringBatch

_PLACEHOLDER = re.compile(r"\{(prompt|response_a|response_b)\}")
VERDICTS = {"A": 0, "1": 0, "B": 1, "2": 1}
UNPAIRED, TIE = 0.5, 0.5


def fill_template(template: str, prompt: str, response_a: str, response_b: str) -> str:
    """The template with its three placeholders replaced in one pass (a response that itself
    contains "{prompt}" is not substituted again); other braces are kept as they are."""
    values = {"prompt": prompt, "response_a": response_a, "response_b": response_b}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def parse_verdict(answer: str, pattern: re.Pattern) -> int | None:
    """0 if the answer prefers response A, 1 for B, None if ``pattern`` finds no verdict in it (no
    match, or a first group that is not A, B, 1 or 2)."""
    match = pattern.search(answer)
    if match is None or match.group(1) is None:
        return None
    return VERDICTS.get(match.group(1).strip().upper())


@dataclass
class Judgement:
    """One pair's judgement: ``winner`` 0 (response A) or 1 (B), or None; the raw answers (two with
    ``bothOrders``, the second to the swapped pair)."""

    prompt: str
    response_a: str
    response_b: str
    answers: list[str]
    winner: int | None
    parsed: bool
    consistent: bool

    def as_record(self) -> dict:
        return {"prompt": self.prompt, "responseA": self.response_a, "responseB": self.response_b, "answers": self.answers,
                "winner": None if self.winner is None else "AB"[self.winner], "parsed": self.parsed, "consistent": self.consistent}


class LlmJudge:
    """Judges pairs with a causal LM: greedy answers to the filled template, batched."""

    def __init__(self, model, tokenizer, spec: JudgeSpec, batch_size: int = 64, should_stop: Callable[[], None] | None = None):
        self.model, self.tokenizer, self.spec, self.batch_size = model, tokenizer, spec, batch_size
        self.pattern = re.compile(spec.answer_pattern)
        self.should_stop = should_stop or (lambda: None)

    def judge_prompt(self, prompt: str, response_a: str, response_b: str) -> str:
        """The text the judge continues: the filled template, as a user turn of the tokenizer's chat
        template when it has one (its leading bos is left to the encoder, which adds one)."""
        text = fill_template(self.spec.template, prompt, response_a, response_b)
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
            if tok.bos_token and text.startswith(tok.bos_token):
                text = text[len(tok.bos_token):]
        return text

    def answers(self, texts: list[str]) -> list[str]:
        out: list[str] = []
        for start in range(0, len(texts), self.batch_size):
            self.should_stop()
            out += greedy_completions(self.model, self.tokenizer, texts[start : start + self.batch_size],
                                      self.spec.max_new_tokens, self.batch_size)
        return out

    def compare(self, pairs: list[tuple[str, str, str]]) -> list[Judgement]:
        """Judgements of ``(prompt, response_a, response_b)`` pairs."""
        first = self.answers([self.judge_prompt(p, a, b) for p, a, b in pairs])
        second = self.answers([self.judge_prompt(p, b, a) for p, a, b in pairs]) if self.spec.both_orders else None
        judgements = []
        for i, (prompt, a, b) in enumerate(pairs):
            verdict = parse_verdict(first[i], self.pattern)
            answers, parsed, consistent = [first[i]], verdict is not None, True
            if second is not None:
                swapped = parse_verdict(second[i], self.pattern)
                answers.append(second[i])
                parsed = parsed and swapped is not None
                consistent = not parsed or swapped == 1 - verdict
            winner = verdict if parsed and consistent else None
            judgements.append(Judgement(prompt, a, b, answers, winner, parsed, consistent))
        return judgements


def consecutive_pairs(group_ids: list[int]) -> list[tuple[int, int]]:
    """Rows (i, j) judged against each other: the responses of each prompt, in sampling order, in
    consecutive pairs (1-2, 3-4, ...); an odd last response is left out."""
    members: dict[int, list[int]] = {}
    for row, g in enumerate(group_ids):
        members.setdefault(g, []).append(row)
    return [(rows[i], rows[i + 1]) for rows in members.values() for i in range(0, len(rows) - 1, 2)]


class JudgeScorer:
    """``RoundSampler``'s scorer for an LLM judge (see the module docstring). ``judgements`` holds
    the last call's judgements, in pair order, for the round's ``judgements.jsonl``."""

    def __init__(self, judge: LlmJudge):
        self.judge = judge
        self.judgements: list[Judgement] = []

    def __call__(self, batch: ScoringBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        size = len(batch.responses)
        pairs = consecutive_pairs(batch.group_ids.tolist())
        self.judgements = self.judge.compare([(batch.prompts[i], batch.responses[i], batch.responses[j]) for i, j in pairs])
        score = torch.full((size,), UNPAIRED)
        unparsed, inconsistent = torch.zeros(size), torch.zeros(size)
        for (i, j), judged in zip(pairs, self.judgements):
            if judged.winner is None:
                score[i] = score[j] = TIE
                (unparsed if not judged.parsed else inconsistent)[[i, j]] = 1.0
            else:
                score[i], score[j] = (1.0, 0.0) if judged.winner == 0 else (0.0, 1.0)
        return score, {"judge_unparsed": unparsed, "judge_inconsistent": inconsistent}


def load_judge(ctx: RunContext) -> tuple[object, object]:
    """(model, tokenizer) of the stage's judge: ``inputs.judge`` is a checkpoint or model directory
    URI (an earlier stage's output, an adapter checkpoint merged onto its base, or ``judge.uri``) or
    ``hf://ORG/NAME@REVISION`` (``judge.hub``, from the Hugging Face cache), loaded as every model
    input is; in bf16 on a GPU that has it (it only reads)."""
    uri = ctx.config.inputs.judge
    if uri is None:
        raise ConfigError("the judge's model did not resolve (judge.fromStage names a stage without a checkpoint)")
    start = load_model(ctx, uri)
    model = start.model
    if model.device.type == "cuda" and torch.cuda.is_bf16_supported():
        model = model.to(torch.bfloat16)
    return model.eval(), start.tokenizer
