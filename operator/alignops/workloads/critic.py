"""The critic (value model) of PPO: a Hugging Face ``AutoModelForTokenClassification`` with
``num_labels=1``, i.e. a transformer under a scalar ``score`` head read at every position.

Initialised from the reward model when the stage has one (InstructGPT; the reward stage's
``LlamaForSequenceClassification`` has a head of the same name and shape, so it loads as is), else
from the policy's starting transformer (new head). Saved beside the policy in each checkpoint under
``critic/``, which transformers and vLLM ignore when they load the policy.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from transformers import AutoModelForTokenClassification, LlamaForTokenClassification

from alignops.api.common import Architecture
from alignops.workloads.modeling import build_model

CRITIC_DIR = "critic"


def _no_dropout(model):
    # the head's default dropout (0.1) would make V differ between the rollout-time and update passes
    model.config.classifier_dropout = 0.0
    model.dropout = torch.nn.Identity()
    return model


def load_critic(path: Path):
    """A value model from any checkpoint with a matching transformer (critic, reward model or policy)."""
    model = AutoModelForTokenClassification.from_pretrained(str(path), num_labels=1, dtype=torch.float32)
    return _no_dropout(model)


def build_critic(arch: Architecture, tokenizer) -> LlamaForTokenClassification:
    """The base architecture's transformer (the weights ``build_model`` gives the policy) under a new head."""
    policy = build_model(arch, tokenizer)
    config = copy.deepcopy(policy.config)
    config.num_labels = 1
    config.classifier_dropout = 0.0
    model = LlamaForTokenClassification(config)
    model.model.load_state_dict(policy.model.state_dict())
    return _no_dropout(model)


def token_values(critic, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L-1) values V(s_t) aligned with next-token log-probs: position t's value is read from the
    hidden state that predicts token t+1 (the state before that action)."""
    return critic(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1, 0].float()
