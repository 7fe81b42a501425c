"""The SFT stage: next-token cross-entropy on response tokens only (prompt tokens masked), with
OpenChat's C-RLFT condition weights per data source (``conditionWeights``).

Held-out figures: ``evalLoss`` (response-token cross-entropy) and, on the demo task, ``accuracy``
(greedy answers right)."""

from __future__ import annotations

import sys

import torch

from alignops.algos.sft import masked_lm_loss
from alignops.api.hyperparameters import SftHyperparameters
from alignops.workloads.context import ConfigError
from alignops.workloads.data.batching import sft_batch
from alignops.workloads.data.held_out import held_out_source
from alignops.workloads.data.records import DatasetError, load_records
from alignops.workloads.data.sft import SftExample, tokenize_sft
from alignops.workloads.evaluation.generation import greedy_accuracy, sft_eval_loss
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


def sft_loss(model, examples: list[SftExample], pad_token_id: int, condition_weights: dict[str, float] | None = None) -> MicroBatchLoss:
    """The SFT loss of one micro-batch: response-token cross-entropy (``masked_lm_loss``), each
    example weighted by its source's C-RLFT weight when ``condition_weights`` is given."""
    input_ids, labels, attention = sft_batch(examples, pad_token_id, next(model.parameters()).device)
    logits = model(input_ids=input_ids, attention_mask=attention).logits
    example_weights = None
    if condition_weights:
        example_weights = torch.tensor([condition_weights.get(e.source or "", 1.0) for e in examples], device=logits.device)
    return MicroBatchLoss(loss=masked_lm_loss(logits.float(), labels, example_weights), tokens=int(attention.sum()))


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
        return sft_loss(model, [self.train[i] for i in indices], self.pad, self.hp.condition_weights)

    def extra_metrics(self) -> dict[str, float]:
        return {"droppedExamples": self.dropped} if self.dropped else {}


STAGE = SftStage
