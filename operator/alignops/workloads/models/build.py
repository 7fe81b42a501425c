"""Models built in code: the demo's character-level tokenizer (made locally, nothing downloaded),
a tiny Llama from a manifest's ``architecture``, and the same transformer under a scalar head
(the reward model's and the critic's)."""

from __future__ import annotations

import copy
import string

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from alignops.api.common import Architecture

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
# Every printable ASCII character is one token: any English data tokenises, nothing is downloaded.
ALPHABET = string.printable.replace("\x0b", "").replace("\x0c", "")
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
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
