"""Models built in code: the demo's character-level tokenizer or a byte-level BPE trained on the
stage's text (made locally, nothing downloaded), a tiny Llama from a manifest's ``architecture``, and
the same transformer under a scalar head (the reward model's and the critic's)."""

from __future__ import annotations

import copy
import string
from itertools import islice
from typing import Callable, Iterable, Iterator

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from alignops.api.common import Architecture

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
# Every printable ASCII character is one token: any English data tokenises, nothing is downloaded.
ALPHABET = string.printable.replace("\x0b", "").replace("\x0c", "")
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


# The BPE tokenizer is laid out as Qwen's: ChatML turns, no BOS, pad <|endoftext|>, and a turn
# ends at <|im_end|> (its EOS) or <|endoftext|> (the generation config lists both). The template
# marks assistant turns with {% generation %} (transformers' assistant-token mask).
BPE_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
END_TOKENS = ("</s>", "<|im_end|>", "<|endoftext|>")
# Qwen2's pre-tokenizer split: words, single digits (numbers never merge: 123 is 1 2 3), punctuation runs, spaces
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
BPE_TEXT_LIMIT = 64 << 20  # characters of training text read for the BPE: enough, and bounded


def build_tokenizer(arch: Architecture | None = None, texts: Callable[[], Iterable[str]] | None = None) -> PreTrainedTokenizerFast:
    """The tokenizer ``arch.tokenizer`` names: ``char`` (the default) or ``bpe``, trained on
    ``texts()`` (called only then)."""
    if arch is None or arch.tokenizer == "char":
        return build_char_tokenizer()
    return build_bpe_tokenizer(texts() if texts is not None else (), arch.vocab_size)


def build_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE (Qwen2's kind: any text tokenises, no unknown token, digits one by one)
    trained on ``texts`` with ``tokenizers``; the same texts give the same tokenizer."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=BPE_SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(_bounded(texts, BPE_TEXT_LIMIT), trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        model_max_length=131072)
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def _bounded(texts: Iterable[str], limit: int) -> Iterator[str]:
    used = 0
    for text in texts:
        if used >= limit:
            return
        used += len(text)
        yield text


def record_texts(records: Iterable[dict], limit: int | None = None) -> Iterator[str]:
    """Every string in dataset records (nested ones too: chat messages), in order."""
    def walk(value) -> Iterator[str]:
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for item in value.values():
                yield from walk(item)
        elif isinstance(value, list):
            for item in value:
                yield from walk(item)

    return islice((text for record in records for text in walk(record)), limit)


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + sorted(set(ALPHABET)))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        model_max_length=131072,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(arch: Architecture, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size or 4 * arch.hidden_size,
        num_hidden_layers=arch.layers,
        num_attention_heads=arch.heads,
        num_key_value_heads=arch.heads,
        max_position_embeddings=arch.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(arch.seed)  # the same architecture and seed give the same initial weights
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    vocab = tokenizer.get_vocab()
    ends = list(dict.fromkeys([tokenizer.eos_token_id] + [vocab[t] for t in END_TOKENS if t in vocab]))
    model.generation_config.eos_token_id = ends if len(ends) > 1 else ends[0]
    return model


def build_scalar_head_model(arch: Architecture, tokenizer: PreTrainedTokenizerFast, head_class, **config_updates):
    """``head_class`` (e.g. ``LlamaForSequenceClassification``) with ``num_labels=1`` over the base
    architecture's transformer: the weights ``build_model`` gives the policy, under a new head
    initialised from the global RNG (the stage seeds it)."""
    policy = build_model(arch, tokenizer)
    config = copy.deepcopy(policy.config)
    config.num_labels = 1
    for name, value in config_updates.items():
        setattr(config, name, value)
    model = head_class(config)
    model.model.load_state_dict(policy.model.state_dict())
    return model
