"""The critic (value model) of PPO: a Hugging Face ``AutoModelForTokenClassification`` with
``num_labels=1``, i.e. a transformer under a scalar ``score`` head read at every position.

Initialised from the reward model when the stage has one (InstructGPT; the reward stage's
``LlamaForSequenceClassification`` has a head of the same name and shape, so it loads as is), else
from the policy's starting transformer (new head). Saved beside the policy in each checkpoint under
``critic/``, which transformers and vLLM ignore when they load the policy.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForTokenClassification, LlamaForTokenClassification

from alignops.api.common import Architecture
from alignops.workloads.models.build import build_scalar_head_model
from alignops.workloads.models.loading import float32_head

CRITIC_DIR = "critic"
CRITIC_PREFIX = "critic"  # its parameters' names in the optimizer state


def _no_dropout(model):
    # the head's default dropout (0.1) would make V differ between the rollout-time and update passes
    model.config.classifier_dropout = 0.0
    model.dropout = torch.nn.Identity()
    return model


def load_critic(path: Path, trust_remote_code: bool = False):
    """A value model from any checkpoint with a matching transformer (critic, reward model or policy)."""
    model = AutoModelForTokenClassification.from_pretrained(str(path), num_labels=1, dtype=torch.float32,
                                                            trust_remote_code=trust_remote_code)
    return float32_head(_no_dropout(model))


def build_critic(arch: Architecture, tokenizer) -> LlamaForTokenClassification:
    """The base architecture's transformer (the weights ``build_model`` gives the policy) under a new head."""
    return float32_head(_no_dropout(build_scalar_head_model(arch, tokenizer, LlamaForTokenClassification, classifier_dropout=0.0)))
