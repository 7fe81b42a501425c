"""Activation (gradient) checkpointing of a stage's trained models (``gradientCheckpointing``)."""

from __future__ import annotations

from alignops.workloads.context import ConfigError


def enable_gradient_checkpointing(*models) -> None:
    """Recompute each transformer layer in the backward pass instead of keeping its activations
    (transformers' own mechanism; the non-reentrant form, which honours autocast and needs no input
    that requires grad). Generation is unaffected: transformers checkpoints only in training mode."""
    for model in models:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise ConfigError(f"gradientCheckpointing: {type(model).__name__} does not support it; set it to false")
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False  # a KV cache is useless in training and clashes with recomputation
