"""The SFT stage: next-token cross-entropy on response tokens only (prompt tokens masked), with
OpenChat's C-RLFT condition weights per data source (``conditionWeights``).

Held-out figures: ``evalLoss`` (response-token cross-entropy) and, on the demo task, ``accuracy``
(greedy answers right)."""

from __future__ import annotations

import torch

from alignops.algos.sft import masked_lm_loss
from alignops.api.hyperparameters import SftHyperparameters
from alignops.workloads.context import ConfigError
from alignops.workloads.data.batching import sft_batch
from alignops.workloads.data.held_out import held_out_source
from alignops.workloads.data.learnable import learnable_examples
from alignops.workloads.data.records import load_records
from alignops.workloads.data.sft import tokenize_sft
from alignops.workloads.evaluation.generation import greedy_accuracy, sft_eval_loss
from alignops.workloads.stages.base import Stage
from alignops.workloads.training.loop import MicroBatchLoss


class SftStage(Stage):
    hyperparameters = SftHyperparameters

    def build_dataset(self) -> int:
        records = self.training_records("sft")
        examples = records.each(lambda r: tokenize_sft(r, self.tokenizer, self.hp.max_length))
        self.train = [examples[i] for i in learnable_examples(examples, records.source, self.hp.max_length)]
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
        input_ids, labels, attention = sft_batch(examples, self.pad, next(model.parameters()).device)
        logits = model(input_ids=input_ids, attention_mask=attention).logits
        weights = self.hp.condition_weights
        example_weights = None
        if weights:
            example_weights = torch.tensor([weights.get(e.source or "", 1.0) for e in examples], device=logits.device)
        loss = masked_lm_loss(logits.float(), labels, example_weights)
        return MicroBatchLoss(loss=loss, tokens=int(attention.sum()))


STAGE = SftStage
