"""The rank stage: RRHF (Yuan et al., arXiv:2304.05302) over K responses per prompt.

Each response's score is its length-normalised log-prob p_i; the loss
(``alignops.algos.rrhf``) is ``rankWeight * sum_{r_i < r_j} max(0, p_i - p_j)`` plus the mean token
NLL of the best response. Rewards r are the records' ``scores`` when given, else the ranking (K-1
for the best down to 0). Pairs are rankings of two. No reference model.

Held-out figures: ``accuracy`` (chosen response's per-token mean log-prob above the rejected one's,
RRHF's own score), log-prob margins and, on the demo task, ``answerAccuracy``.
"""

from __future__ import annotations


import torch

from alignops.algos import best_response_index, rrhf
from alignops.api.hyperparameters import RankHyperparameters
from alignops.workloads.comparisons import sequence_logps, to_comparisons, tokenize_response
from alignops.workloads.context import ConfigError, RunContext
from alignops.workloads.data import load_records
from alignops.contract import StageResult
from alignops.workloads.outcome import StageRecord
from alignops.workloads.pair_eval import answer_accuracy, load_held_out_pairs, pair_logps, preference_metrics
from alignops.workloads.policy import starting_policy
from alignops.workloads.sft import parse_hyperparameters
from alignops.workloads.training import LossOutput

ALGORITHMS = ("rrhf",)


def run(ctx: RunContext) -> StageResult:
    hp = parse_hyperparameters(RankHyperparameters, ctx)
    algorithm = ctx.config.algorithm or "rrhf"
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"unknown ranking loss {algorithm!r}; known: {', '.join(ALGORITHMS)}")
    if ctx.config.datasets is None:
        raise ConfigError("datasets.train is required for a rank stage")
    torch.manual_seed(hp.seed)
    start = starting_policy(ctx)
    model, tokenizer = start.model, start.tokenizer
    pad = tokenizer.pad_token_id
    try:
        train = to_comparisons(load_records(ctx.config.datasets.train, "rankings", options=ctx.storage_options))
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"training data: {exc}") from None
    sequences = [[tokenize_response(c.prompt, r, tokenizer, hp.max_length) for r in c.responses] for c in train]
    held, verifiable = load_held_out_pairs(ctx, hp.eval_size, tokenizer, hp.max_length)

    def evaluate(net) -> dict[str, float]:
        if held is None:
            return {}
        metrics = preference_metrics(*pair_logps(net, held, pad), length_normalised=True)
        if verifiable:
            metrics["answerAccuracy"] = answer_accuracy(net, tokenizer, held)
        return metrics

    record = StageRecord(ctx, start, lambda: evaluate(model))

    def loss_fn(net, indices: list[int]) -> LossOutput:
        counts = [len(sequences[i]) for i in indices]
        scores = sequence_logps(net, [e for i in indices for e in sequences[i]], pad)
        width = max(counts)
        device = scores.logp_sum.device
        mask = torch.tensor([[k < n for k in range(width)] for n in counts], device=device)
        # (B, K) per-token mean log-probs and rewards; padded slots are masked
        p = torch.zeros(mask.shape, dtype=scores.logp_sum.dtype, device=device).masked_scatter(mask, scores.logp_mean)
        rewards = torch.tensor([train[i].rewards() + [0.0] * (width - n) for i, n in zip(indices, counts)], device=device)
        best = best_response_index(rewards, mask)
        best_nll = -p.gather(1, best.unsqueeze(1)).squeeze(1)
        losses = rrhf(p, rewards, mask, best_nll, rank_weight=hp.rank_weight)
        metrics = {"best_nll": float(best_nll.detach().mean()), "rank_loss": float((losses - best_nll).detach().mean())}
        return LossOutput(losses.mean(), int(scores.lengths.sum()), metrics)

    loop = record.loop(start, hp, len(train), loss_fn)
    final = loop.run()
    return StageResult(checkpoint_uri=final.uri, metrics=record.metrics(loop, evaluate(model)))
