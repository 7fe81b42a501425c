"""What a generated text must pass to be kept: its parse (the first line, or the text up to its
first blank line), its length, its novelty against the pool (ROUGE-L below the threshold, as
Self-Instruct filters), its distance from the held-out prompts, and the verifier (the rl stage's
reward functions). Every drop is counted by reason, for the stage's metrics."""

from __future__ import annotations

from collections import Counter

import torch

from alignops.api.generate import GenerateHyperparameters
from alignops.api.rl import RewardTerm
from alignops.workloads.generate.rouge import rouge_l, tokens
from alignops.workloads.rl.rewards import RewardMix, RewardResources, ScoringBatch


def first_line(text: str) -> str:
    """An instruction or a judge's answer: the first non-empty line, stripped."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def first_paragraph(text: str) -> str:
    """A response, critique or revision: the text up to its first blank line, stripped."""
    return text.strip().split("\n\n", 1)[0].strip()


class InstructionPool:
    """Instructions kept so far (seeds included); a candidate joins when its length is within
    bounds and its ROUGE-L F to every member (and to every held-out prompt) is below the threshold."""

    def __init__(self, hp: GenerateHyperparameters, seeds: list[str], held_out: list[str], counts: Counter):
        self.hp, self.counts = hp, counts
        self.members = [tokens(s) for s in seeds]
        self.held_out = [tokens(h) for h in held_out]

    def admit(self, instruction: str) -> bool:
        hp = self.hp
        if not instruction:
            self.counts["unparseable"] += 1
            return False
        if not hp.min_instruction_chars <= len(instruction) <= hp.max_instruction_chars:
            self.counts["droppedLength"] += 1
            return False
        candidate = tokens(instruction)
        if any(rouge_l(candidate, m) >= hp.rouge_threshold for m in self.members):
            self.counts["droppedSimilar"] += 1
            return False
        if any(rouge_l(candidate, h) >= hp.rouge_threshold for h in self.held_out):
            self.counts["droppedHeldOut"] += 1
            return False
        self.members.append(candidate)
        return True


class Verifier:
    """The first of each instruction's candidate answers whose weighted verifier reward reaches the
    threshold (without a verifier: the first non-empty one)."""

    def __init__(self, terms: list[RewardTerm] | None, threshold: float, max_new_tokens: int, counts: Counter):
        self.mix = RewardMix(terms, RewardResources()) if terms else None
        self.threshold, self.max_new_tokens, self.counts = threshold, max_new_tokens, counts

    def pick(self, instructions: list[str], candidates: list[list[str]]) -> list[str | None]:
        flat = [(i, first_paragraph(c)) for i, group in enumerate(candidates) for c in group]
        passed = [bool(text) for _, text in flat]
        if self.mix is not None and flat:
            batch = ScoringBatch(prompts=[instructions[i] for i, _ in flat], responses=[t for _, t in flat],
                                 answers=[None] * len(flat), lengths=torch.tensor([len(t) for _, t in flat]),
                                 group_ids=torch.tensor([i for i, _ in flat]), max_new_tokens=self.max_new_tokens)
            total, _ = self.mix(batch)
            passed = [p and float(r) >= self.threshold for p, r in zip(passed, total)]
        chosen: list[str | None] = [None] * len(instructions)
        for (i, text), ok in zip(flat, passed):
            if ok and chosen[i] is None:
                chosen[i] = text
        self.counts["droppedVerifier"] += sum(c is None for c in chosen)
        return chosen
