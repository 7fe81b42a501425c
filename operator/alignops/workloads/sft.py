"""The SFT stage: next-token cross-entropy on response tokens only (prompt tokens masked)."""

from __future__ import annotations


import torch
from pydantic import ValidationError

from alignops.algos.sft import masked_lm_loss
from alignops.api.common import DatasetSource
from alignops.api.hyperparameters import SftHyperparameters
from alignops.workloads.context import ConfigError, RunContext
from alignops.workloads.data import load_records, tokenize_sft
from alignops.contract import StageResult
from alignops.workloads.evaluation import greedy_accuracy, sft_batch, sft_eval_loss
from alignops.workloads.outcome import StageRecord
from alignops.workloads.policy import starting_policy
from alignops.workloads.training import LossOutput


def parse_hyperparameters(model_cls, ctx: RunContext):
    try:
        return model_cls.model_validate(ctx.config.hyperparameters)
    except ValidationError as exc:
        raise ConfigError(f"hyperparameters: {exc}") from None


def held_out_source(ctx: RunContext, size: int) -> tuple[DatasetSource | None, bool]:
    """The held-out source and whether it is a generator's held-out split."""
    datasets = ctx.config.datasets
    if datasets is None:
        raise ConfigError("datasets.train is required for this stage")
    if datasets.eval is not None:
        return datasets.eval, datasets.eval.generator is not None
    if datasets.train.generator is not None:
        return datasets.train.model_copy(update={"size": size}), True
    return None, False


def evaluate(model, tokenizer, eval_examples, prompt_records) -> dict[str, float]:
    metrics = {}
    if eval_examples:
        metrics["evalLoss"] = sft_eval_loss(model, eval_examples, tokenizer.pad_token_id)
    if prompt_records:
        metrics["accuracy"] = greedy_accuracy(model, tokenizer, prompt_records)
    return metrics


def run(ctx: RunContext) -> StageResult:
    hp = parse_hyperparameters(SftHyperparameters, ctx)
    torch.manual_seed(hp.seed)
    start = starting_policy(ctx)
    model, tokenizer = start.model, start.tokenizer
    options = ctx.storage_options
    train_records = load_records(ctx.config.datasets.train, "sft", options=options) if ctx.config.datasets else None
    eval_source, verifiable = held_out_source(ctx, hp.eval_size)
    try:
        train = [tokenize_sft(r, tokenizer, hp.max_length) for r in train_records]
        eval_records = load_records(eval_source, "sft", held_out=verifiable, options=options) if eval_source else []
        eval_examples = [tokenize_sft(r, tokenizer, hp.max_length) for r in eval_records]
    except (KeyError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    prompt_records = [{"prompt": r["prompt"], "answer": r["completion"]} for r in eval_records] if verifiable else []
    weights = hp.condition_weights

    record = StageRecord(ctx, start, lambda: evaluate(model, tokenizer, eval_examples, prompt_records))

    def loss_fn(net, indices: list[int]) -> LossOutput:
        examples = [train[i] for i in indices]
        input_ids, labels, attention = sft_batch(examples, tokenizer.pad_token_id, next(net.parameters()).device)
        logits = net(input_ids=input_ids, attention_mask=attention).logits
        example_weights = None
        if weights:
            example_weights = torch.tensor([weights.get(e.source or "", 1.0) for e in examples], device=logits.device)
        loss = masked_lm_loss(logits.float(), labels, example_weights)
        return LossOutput(loss=loss, tokens=int(attention.sum()), metrics={})

    loop = record.loop(start, hp, len(train), loss_fn)
    final = loop.run()
    after = evaluate(model, tokenizer, eval_examples, prompt_records)
    return StageResult(checkpoint_uri=final.uri, metrics=record.metrics(loop, after))
