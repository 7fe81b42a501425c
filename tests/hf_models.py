"""Hugging Face model directories built at test time, as a user brings them: a tiny Qwen2 (no BOS,
two end-of-turn tokens) saved with ``save_pretrained`` beside a byte-level BPE tokenizer trained
with ``tokenizers`` and a ChatML chat template; an offline Hub cache laid out as ``huggingface_hub``
lays it out; and small chat and preference data about repeating a word."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

WORDS = ["apple", "river", "stone", "cloud", "green", "tiger", "piano", "lemon", "candle", "forest", "silver", "window",
         "garden", "rocket", "pepper", "castle"]


def sft_records() -> list[dict]:
    """Chat records: the user asks for a word, the assistant repeats it."""
    return [{"messages": [{"role": "user", "content": f"Repeat the word {w}."}, {"role": "assistant", "content": w}]}
            for w in WORDS]


def chat_prompt(word: str) -> str:
    return f"<|im_start|>user\nRepeat the word {word}.<|im_end|>\n<|im_start|>assistant\n"


def pair_records() -> list[dict]:
    """Preference pairs on the same task: the word itself over the next word of the list."""
    return [{"prompt": chat_prompt(w), "chosen": w, "rejected": WORDS[(i + 1) % len(WORDS)]} for i, w in enumerate(WORDS)]


def corpus() -> list[str]:
    return [m["content"] for r in sft_records() for m in r["messages"]] * 4


def write_jsonl(path: Path, records: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return f"file://{path}"


def save_tiny_model(directory: Path, max_shard_size: str | None = None) -> Path:
    """A tiny Qwen2ForCausalLM and its tokenizer, saved as save_pretrained saves them."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from alignops.workloads.models.build import build_bpe_tokenizer

    tokenizer = build_bpe_tokenizer(corpus(), 320)
    im_end, end_of_text = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                         tie_word_embeddings=True, bos_token_id=None, eos_token_id=end_of_text, pad_token_id=end_of_text)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = [im_end, end_of_text]
    model.generation_config.pad_token_id = end_of_text
    extra = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(str(directory), **extra)
    tokenizer.save_pretrained(str(directory))
    return directory


def lay_out_hub_cache(hf_home: Path, repo: str, source: Path, commit: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """``HF_HOME/hub/models--ORG--NAME/snapshots/<commit>/`` holding ``source``'s files, with
    ``refs/main`` naming the commit: what huggingface_hub reads under HF_HUB_OFFLINE=1."""
    root = hf_home / "hub" / ("models--" + repo.replace("/", "--"))
    shutil.copytree(source, root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    return root / "snapshots" / commit
