"""Held-out evaluation: greedy accuracy on verifiable prompts, and loss on held-out SFT records."""

from __future__ import annotations

import torch

from alignops.algos.sft import masked_lm_loss
from alignops.demo.arithmetic import is_correct
from alignops.workloads.data import IGNORE_INDEX, SftExample, pad_batch


def encode_prompt(tokenizer, text: str) -> list[int]:
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + tokenizer(text, add_special_tokens=False).input_ids


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
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        )
        out += tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)
    return out


def greedy_accuracy(model, tokenizer, records: list[dict], max_new_tokens: int = 6) -> float:
    """Share of records whose greedy completion holds the reference ``answer``."""
    completions = greedy_completions(model, tokenizer, [r["prompt"] for r in records], max_new_tokens)
    return sum(is_correct(c, r["answer"]) for c, r in zip(completions, records)) / max(1, len(records))


def sft_batch(examples: list[SftExample], pad_token_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    input_ids = torch.tensor(pad_batch([e.input_ids for e in examples], pad_token_id), device=device)
    labels = torch.tensor(pad_batch([e.labels for e in examples], IGNORE_INDEX), device=device)
    attention = torch.tensor(pad_batch([[1] * len(e.input_ids) for e in examples], 0), device=device)
    return input_ids, labels, attention


@torch.no_grad()
def sft_eval_loss(model, examples: list[SftExample], pad_token_id: int, batch_size: int = 64) -> float:
    model.eval()
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for start in range(0, len(examples), batch_size):
        input_ids, labels, attention = sft_batch(examples[start : start + batch_size], pad_token_id, device)
        count = int((labels[:, 1:] != IGNORE_INDEX).sum())
        logits = model(input_ids=input_ids, attention_mask=attention).logits
        total += float(masked_lm_loss(logits.float(), labels)) * count
        tokens += count
    return total / max(1, tokens)
