"""The SFT stage: next-token cross-entropy on response tokens only (prompt tokens masked), with
OpenChat's C-RLFT condition weights per data source (``conditionWeights``).

The loss of an optimiser step is the token mean over the response tokens of the whole step, on every
process (``loss_units`` counts them; the loop weights each micro-batch's token mean by its share),
so an example's tokens weigh the same whatever micro-batch or process it lands in, packed or not. With ``packing`` the items
are rows of examples packed to maxLength (``alignops.workloads.data.packing``).

Held-out figures: ``evalLoss`` (response-token cross-entropy) and, on the demo task, ``accuracy``
(greedy answers right)."""

from __future__ import annotations

import torch

from alignops.algos.sft import masked_lm_loss
from alignops.demo import task_of
from alignops.api.hyperparameters import SftHyperparameters
from alignops.workloads.context import ConfigError
from alignops.workloads.data.batching import sft_batch, to_device
from alignops.workloads.data.held_out import held_out_records
from alignops.workloads.data.packing import pack_bfd, packed_batch, packed_logits
from alignops.workloads.data.sft import SftExample, tokenize_sft
from alignops.workloads.evaluation.generation import greedy_accuracy, sft_eval_loss
from alignops.workloads.models import token_logps
from alignops.workloads.stages.base import Stage
from alignops.workloads.training.loop import MicroBatchLoss


def sft_loss(model, examples: list[SftExample], pad_token_id: int, condition_weights: dict[str, float] | None = None) -> MicroBatchLoss:
    """The SFT loss of one micro-batch of unpacked examples: the token mean of the response-token
    cross-entropy, each example weighted by its source's C-RLFT weight when ``condition_weights``
    is given. Fused or chunked (``token_logps.sft_loss``): no (batch, length, vocabulary) logits;
    tokens counted on the host."""
    device = next(model.parameters()).device
    input_ids, labels, attention = sft_batch(examples, pad_token_id, device)
    example_weights = None
    if condition_weights:
        example_weights = to_device(torch.tensor([condition_weights.get(e.source or "", 1.0) for e in examples]), device)
    loss = token_logps.sft_loss(model, input_ids, attention, labels, example_weights)
    return MicroBatchLoss(loss=loss, tokens=sum(len(e.input_ids) for e in examples))


class SftStage(Stage):
    hyperparameters = SftHyperparameters

    def check(self) -> None:
        if self.hp.packing and self.ctx.config.datasets is not None and self.ctx.config.datasets.train.streaming:
            raise ConfigError("hyperparameters.packing with streamed data is not supported; drop one of them")

    def build_dataset(self) -> int | None:
        self.train = self.training_data("sft", "sft").items
        self.rows = pack_bfd(self.train.lengths(), self.hp.max_length) if self.hp.packing else None
        if self.data.streamed:
            return None
        return len(self.rows) if self.rows is not None else len(self.train)

    def loss_units(self, indices: list[int]) -> float:
        """Response tokens of the items (a packed row's examples): the loss is their token mean."""
        return self.train.response_tokens([e for i in indices for e in self.examples_of(i)])

    def build_held_out(self) -> None:
        source = self.ctx.config.datasets.train
        records, verifiable = held_out_records(self.ctx, self.hp.eval_size, "sft", self.data.carved,
                                               generated_format=source.format)
        try:
            self.eval_examples = records.each(lambda r: tokenize_sft(r, self.tokenizer, self.hp.max_length)) if records else []
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"held-out data: {exc}") from None
        self.prompt_records = [{"prompt": r["prompt"], "answer": r["completion"]} for r in records] if verifiable else []
        self.task = task_of(source.generator if source else None)

    def evaluate(self, model) -> dict[str, float]:
        metrics = {}
        if self.eval_examples:
            metrics["evalLoss"] = sft_eval_loss(model, self.eval_examples, self.pad)
        if self.prompt_records:
            metrics["accuracy"] = greedy_accuracy(model, self.tokenizer, self.prompt_records, self.task.answer_tokens,
                                                  self.task.is_correct)
        return metrics

    def examples_of(self, index: int) -> list[int]:
        """The examples of training item ``index`` (a packed row's, or the example itself)."""
        return self.rows[index] if self.rows is not None else [index]

    def loss(self, model, indices: list[int]) -> MicroBatchLoss:
        device = next(model.parameters()).device
        weights = self.hp.condition_weights
        if self.rows is None:  # the token mean of these examples; the loop weights it by their share
            return sft_loss(model, self.train.take(indices), self.pad, weights)
        rows = [self.train.take(self.rows[i]) for i in indices]
        input_ids, labels, positions = packed_batch(rows, self.pad, device)
        logits = packed_logits(model, input_ids, positions)
        tokens = sum(len(e.input_ids) for row in rows for e in row)
        example_weights = None
        if weights:  # per token: each example's weight over its span of the row
            example_weights = to_device(torch.tensor([[weights.get(e.source or "", 1.0) for e in row for _ in e.input_ids]
                                                      + [1.0] * (input_ids.shape[1] - sum(len(e.input_ids) for e in row))
                                                      for row in rows]), device)
        # the token mean of these items; the loop weights it by their share of the step's tokens
        loss = masked_lm_loss(logits.float(), labels, example_weights)
        return MicroBatchLoss(loss=loss, tokens=tokens)


STAGE = SftStage
