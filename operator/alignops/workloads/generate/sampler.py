"""Texts from prompts with a rollout engine (``alignops.workloads.rollout``): prompts are encoded
as generation sees them (bos + text, the last ``maxPromptLength`` tokens), every call is seeded by
(seed, call number), so a rerun writes the same dataset."""

from __future__ import annotations

from alignops.seeds import GENERATE_CALL, PROMPT, derive_seed
from alignops.workloads.context import RunContext, StopRequested
from alignops.workloads.data.batching import encode_prompt
from alignops.workloads.rollout import SamplingSettings


class TextSampler:
    def __init__(self, ctx: RunContext, engine, tokenizer, hp):
        self.ctx, self.engine, self.tokenizer, self.hp = ctx, engine, tokenizer, hp
        self.calls = 0
        self.generated_tokens = 0

    def complete(self, prompts: list[str], n: int = 1, stop: tuple[str, ...] = (), max_new_tokens: int | None = None) -> list[list[str]]:
        """``n`` sampled continuations of each prompt, in prompt order."""
        hp = self.hp
        sampling = SamplingSettings(n=n, temperature=hp.temperature, top_p=hp.top_p,
                                    max_new_tokens=max_new_tokens or hp.max_new_tokens, stop=stop)
        ids = [encode_prompt(self.tokenizer, p)[-hp.max_prompt_length :] for p in prompts]
        out: list[list[str]] = []
        step = self.engine.prompts_per_call
        for start in range(0, len(ids), step):
            if self.ctx.stop.is_set():
                raise StopRequested("stopped while generating; nothing was committed, the next run starts over")
            self.calls += 1
            chunk = ids[start : start + step]
            # one seed per prompt (the engines' contract): equal prompts still draw their own samples
            seeds = [derive_seed(hp.seed, (GENERATE_CALL, self.calls), (PROMPT, i)) for i in range(len(chunk))]
            groups = self.engine.generate(chunk, sampling, seeds)
            self.generated_tokens += sum(len(c.token_ids) for g in groups for c in g)
            out += [[c.text for c in group] for group in groups]
        return out
