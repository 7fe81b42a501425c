"""Held-out figures from generation and teacher forcing: greedy accuracy on verifiable prompts, and
the loss on held-out SFT records."""

from __future__ import annotations

from typing import Callable

import torch

from alignops.algos import IGNORE_INDEX
from alignops.demo.arithmetic import is_correct
from alignops.workloads.data.batching import encode_prompt, sft_batch
from alignops.workloads.data.sft import SftExample
from alignops.workloads.models.loading import stop_token_ids
from alignops.workloads.models.token_logps import sft_loss


@torch.no_grad()
def greedy_completions(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 64) -> list[str]:
    """Greedy completions, batched with left padding."""
    model.eval()
    device = next(model.parameters()).device
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        encoded = [encode_prompt(tokenizer, p) for p in prompts[start : start + batch_size]]
        width = max(len(e) for e in encoded)
        input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(e)) + e for e in encoded], device=device)
        attention = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)
        generated = model.generate(
            input_ids=input_ids, attention_mask=attention, max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=stop_token_ids(model, tokenizer),
        )
        out += tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)
    return out


def greedy_accuracy(model, tokenizer, records: list[dict], max_new_tokens: int = 6,
                    correct: Callable[[str, str], bool] = is_correct) -> float:
    """Share of records whose greedy completion holds the reference ``answer`` (``correct``: the
    demo task's check, ``alignops.demo.task_of``)."""
    completions = greedy_completions(model, tokenizer, [r["prompt"] for r in records], max_new_tokens)
    return sum(correct(c, r["answer"]) for c, r in zip(completions, records)) / max(1, len(records))


@torch.no_grad()
def sft_eval_loss(model, examples: list[SftExample], pad_token_id: int, batch_size: int = 64) -> float:
    """Mean token cross-entropy over the response tokens of held-out examples."""
    model.eval()
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for start in range(0, len(examples), batch_size):
        input_ids, labels, attention = sft_batch(examples[start : start + batch_size], pad_token_id, device)
        count = int((labels[:, 1:] != IGNORE_INDEX).sum())
        total += float(sft_loss(model, input_ids, attention, labels)) * count
        tokens += count
    return total / max(1, tokens)
