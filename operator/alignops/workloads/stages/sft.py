"""The SFT stage: next-token cross-entropy on response tokens only (prompt tokens masked), with
OpenChat's C-RLFT condition weights per data source (``conditionWeights``).

Held-out figures: ``evalLoss`` (response-token cross-entropy) and, on the demo task, ``accuracy``
(greedy answers right)."""

from __future__ import annotations

import sys

import torch

from alignops.api.hyperparameters import SftHyperparameters
from alignops.workloads.context import ConfigError
from alignops.workloads.data.batching import sft_batch, to_device
from alignops.workloads.data.held_out import held_out_source
from alignops.workloads.data.records import DatasetError, load_records
from alignops.workloads.data.sft import SftExample, tokenize_sft
from alignops.workloads.evaluation.generation import greedy_accuracy, sft_eval_loss
from alignops.workloads.models.token_logps import sft_loss
from alignops.workloads.stages.base import Stage
from alignops.workloads.training.loop import MicroBatchLoss


DROPPED_WARNING_SHARE = 0.1


def learnable_examples(examples: list[SftExample], source: str, max_length: int) -> list[SftExample]:
    """The examples with something to learn. A dataset with nothing (every prompt fills maxLength,
    or every completion is empty) is a configuration error, not a run that trains on loss 0; a
    large share dropped is a warning."""
    kept = [e for e in examples if e.learns]
    if not kept:
        raise DatasetError(f"{source}: no example has a response token within maxLength {max_length} "
                           "(every prompt is as long or longer); raise hyperparameters.maxLength")
    if all(e.empty_response for e in kept):
        raise DatasetError(f"{source}: every completion is empty; nothing to learn but end-of-sequence "
                           "(check the `completion` field or the assistant turns)")
    dropped = len(examples) - len(kept)
    if dropped > DROPPED_WARNING_SHARE * len(examples):
        print(f"warning: {source}: {dropped} of {len(examples)} examples have no response token within "
              f"maxLength {max_length} and are skipped; raise hyperparameters.maxLength to keep them", file=sys.stderr)
    return kept


class SftStage(Stage):
    hyperparameters = SftHyperparameters

    def build_dataset(self) -> int:
        records = self.training_records("sft")
        examples = records.each(lambda r: tokenize_sft(r, self.tokenizer, self.hp.max_length))
        self.train = learnable_examples(examples, records.source, self.hp.max_length)
        self.dropped = len(examples) - len(self.train)
        return len(self.train)

    def build_held_out(self) -> None:
        source, verifiable = held_out_source(self.ctx, self.hp.eval_size)
        try:
            records = load_records(source, "sft", held_out=verifiable, options=self.ctx.storage_options) if source else []
            self.eval_examples = records.each(lambda r: tokenize_sft(r, self.tokenizer, self.hp.max_length)) if records else []
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"held-out data: {exc}") from None
        self.prompt_records = [{"prompt": r["prompt"], "answer": r["completion"]} for r in records] if verifiable else []

    def evaluate(self, model) -> dict[str, float]:
        metrics = {}
        if self.eval_examples:
            metrics["evalLoss"] = sft_eval_loss(model, self.eval_examples, self.pad)
        if self.prompt_records:
            metrics["accuracy"] = greedy_accuracy(model, self.tokenizer, self.prompt_records)
        return metrics

    def loss(self, model, indices: list[int]) -> MicroBatchLoss:
        examples = [self.train[i] for i in indices]
        device = next(model.parameters()).device
        input_ids, labels, attention = sft_batch(examples, self.pad, device)
        weights = self.hp.condition_weights
        example_weights = None
        if weights:
            example_weights = to_device(torch.tensor([weights.get(e.source or "", 1.0) for e in examples]), device)
        # the fused/chunked loss: no (batch, length, vocabulary) logits; tokens counted on the host
        loss = sft_loss(model, input_ids, attention, labels, example_weights)
        return MicroBatchLoss(loss=loss, tokens=sum(len(e.input_ids) for e in examples))

    def extra_metrics(self) -> dict[str, float]:
        return {"droppedExamples": self.dropped} if self.dropped else {}


STAGE = SftStage
