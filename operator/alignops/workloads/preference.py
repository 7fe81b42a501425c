"""The preference stage: offline preference optimisation of a policy against a frozen reference.

``algorithm`` names a loss of ``alignops.algos.PREFERENCE_LOSSES``: dpo, cdpo, ipo, simpo, orpo
(on pairs; a ranking counts as all its pairs) or kto (on unpaired records; a pair counts as a
desirable and an undesirable example). The reference is ``reference`` if given, else the policy's
starting checkpoint (its own input, or the base model), never the stage's resumed checkpoint. Its
log-probs of the training sequences are computed once, lazily, and cached
(``alignops.workloads.reference``). simpo and orpo are reference-free: the reference is then
loaded only to report the KL after training.

Held-out figures (before and after): ``accuracy`` (chosen log-prob above rejected; per-token mean
for simpo and orpo, whose losses compare means), ``implicitAccuracy`` (the loss's own implicit
rewards ranked right), chosen/rejected log-probs and their margin, ``kl`` (exact per-token KL to
the reference on held-out responses) and, on the demo task, ``answerAccuracy`` (greedy sums right).
"""

from __future__ import annotations

import copy

import torch

from alignops.algos import PREFERENCE_LOSSES, KTOInputs, PreferenceInputs, PreferenceOptions, UnknownNameError, kto_reference_point
from alignops.api.hyperparameters import PreferenceHyperparameters
from alignops.workloads.comparisons import SequenceScores, sequence_logps, to_comparisons, to_pairs, to_unpaired, tokenize_response
from alignops.workloads.context import ConfigError, RunContext
from alignops.workloads.data import load_records
from alignops.contract import StageResult
from alignops.workloads.outcome import StageRecord
from alignops.workloads.pair_eval import answer_accuracy, load_held_out_pairs, pair_logps, preference_metrics, token_kl
from alignops.workloads.policy import initial_model, starting_policy
from alignops.workloads.reference import ReferenceLogps, freeze
from alignops.workloads.sft import parse_hyperparameters
from alignops.workloads.training import LossOutput

REFERENCE_FREE = ("simpo", "orpo")
LENGTH_NORMALISED = ("simpo", "orpo")


def loss_options(hp: PreferenceHyperparameters) -> PreferenceOptions:
    return PreferenceOptions(
        beta=hp.beta, label_smoothing=hp.label_smoothing, ipo_length_normalize=hp.ipo_length_normalize,
        simpo_gamma=hp.simpo_gamma, orpo_lambda=hp.orpo_lambda,
        kto_desirable_weight=hp.kto_desirable_weight, kto_undesirable_weight=hp.kto_undesirable_weight,
        rpo_alpha=hp.rpo_alpha,
    )


def resolve_loss(algorithm: str, options: PreferenceOptions):
    """The registered loss, after a dry run on one dummy example so that a bad name or option
    combination (dpo with labelSmoothing) fails at once as a configuration error, not mid-run."""
    try:
        loss = PREFERENCE_LOSSES.get(algorithm)
        one, zero = torch.ones(1), torch.zeros(1)
        if algorithm == "kto":
            loss(KTOInputs(zero, zero, torch.ones(1, dtype=torch.bool), 0.0), options)
        else:
            loss(PreferenceInputs(zero, zero, zero, zero, one, one), options)
    except (UnknownNameError, ValueError, TypeError) as exc:
        raise ConfigError(f"preference loss: {exc}") from None
    return loss


def batch_metrics(out) -> dict[str, float]:
    chosen, rejected = out.chosen_rewards, out.rejected_rewards
    metrics = {}
    if len(chosen) and len(chosen) == len(rejected):
        metrics["reward_accuracy"] = float((chosen > rejected).float().mean())
        metrics["reward_margin"] = float((chosen - rejected).mean())
    if len(chosen):
        metrics["reward_chosen"] = float(chosen.mean())
    if len(rejected):
        metrics["reward_rejected"] = float(rejected.mean())
    return metrics


def run(ctx: RunContext) -> StageResult:
    hp = parse_hyperparameters(PreferenceHyperparameters, ctx)
    algorithm = ctx.config.algorithm or "dpo"
    options = loss_options(hp)
    loss = resolve_loss(algorithm, options)
    if ctx.config.datasets is None:
        raise ConfigError("datasets.train is required for a preference stage")
    torch.manual_seed(hp.seed)
    start = starting_policy(ctx)
    model, tokenizer = start.model, start.tokenizer
    pad = tokenizer.pad_token_id
    reference_uri = ctx.config.inputs.reference or ctx.config.inputs.policy

    def load_reference(untrained: bool):
        if untrained and start.resume is None and ctx.config.inputs.reference is None:
            return freeze(copy.deepcopy(model))  # the starting policy is the reference: no second load
        return freeze(initial_model(ctx, reference_uri).model)

    reference = None if algorithm in REFERENCE_FREE else load_reference(untrained=True)

    try:
        records = load_records(ctx.config.datasets.train, "unpaired" if algorithm == "kto" else "pairs", options=ctx.storage_options)
        if algorithm == "kto":
            unpaired = to_unpaired(records)
            items = [[tokenize_response(u.prompt, u.completion, tokenizer, hp.max_length)] for u in unpaired]
        else:
            pairs = to_pairs(to_comparisons(records))
            items = [[tokenize_response(p.prompt, r, tokenizer, hp.max_length) for r in p.responses] for p in pairs]
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"training data: {exc}") from None
    if not items:
        raise ConfigError("the training data holds no comparisons")
    cache = ReferenceLogps(reference, items, pad) if reference is not None else None

    held, verifiable = load_held_out_pairs(ctx, hp.eval_size, tokenizer, hp.max_length)
    held_ref: tuple[SequenceScores, SequenceScores] | None = None

    def evaluate(net, kl_reference) -> dict[str, float]:
        nonlocal held_ref
        if held is None:
            return {}
        chosen, rejected = pair_logps(net, held, pad)
        metrics = preference_metrics(chosen, rejected, algorithm in LENGTH_NORMALISED)
        if algorithm in REFERENCE_FREE:
            out = loss(PreferenceInputs(chosen.logp_sum, rejected.logp_sum, chosen_lengths=chosen.lengths,
                                        rejected_lengths=rejected.lengths), options)
        else:
            held_ref = held_ref or pair_logps(reference, held, pad)
            ref_c, ref_r = held_ref
            if algorithm == "kto":  # KTO's implicit reward is DPO's: beta * (log pi - log pi_ref)
                out = PREFERENCE_LOSSES.get("dpo")(PreferenceInputs(chosen.logp_sum, rejected.logp_sum, ref_c.logp_sum, ref_r.logp_sum),
                                                   PreferenceOptions(beta=hp.beta))
            else:
                out = loss(PreferenceInputs(chosen.logp_sum, rejected.logp_sum, ref_c.logp_sum, ref_r.logp_sum,
                                            chosen.lengths, rejected.lengths), options)
        metrics["implicitAccuracy"] = float((out.chosen_rewards > out.rejected_rewards).float().mean())
        if algorithm != "kto":
            metrics["evalLoss"] = float(out.losses.mean())
        metrics["kl"] = token_kl(net, kl_reference, held.chosen + held.rejected, pad) if kl_reference is not None else 0.0
        if verifiable:
            metrics["answerAccuracy"] = answer_accuracy(net, tokenizer, held)
        return metrics

    def evaluate_before() -> dict[str, float]:
        # the untrained policy is its own reference (KL 0) unless another one was named
        named = ctx.config.inputs.reference is not None
        return evaluate(model, (reference or load_reference(untrained=True)) if named else None)

    record = StageRecord(ctx, start, evaluate_before)

    def pair_loss(net, indices: list[int]) -> LossOutput:
        # chosen and rejected in one forward pass (TRL's concatenated forward)
        scores = sequence_logps(net, [items[i][0] for i in indices] + [items[i][1] for i in indices], pad)
        b = len(indices)
        ref = cache.get(indices) if cache is not None else None
        inputs = PreferenceInputs(
            policy_chosen_logps=scores.logp_sum[:b], policy_rejected_logps=scores.logp_sum[b:],
            ref_chosen_logps=ref[:, 0] if ref is not None else None, ref_rejected_logps=ref[:, 1] if ref is not None else None,
            chosen_lengths=scores.lengths[:b], rejected_lengths=scores.lengths[b:],
        )
        out = loss(inputs, options)
        logps = scores.logp_sum.detach()
        metrics = {**batch_metrics(out), "logp_chosen": float(logps[:b].mean()), "logp_rejected": float(logps[b:].mean())}
        return LossOutput(out.losses.mean(), int(scores.lengths.sum()), metrics)

    def kto_loss(net, indices: list[int]) -> LossOutput:
        scores = sequence_logps(net, [items[i][0] for i in indices], pad)
        # KTO's reference point: completions shifted by one within the batch (TRL), no gradient
        mismatched = [tokenize_response(unpaired[i].prompt, unpaired[indices[(k + 1) % len(indices)]].completion, tokenizer, hp.max_length)
                      for k, i in enumerate(indices)]
        with torch.no_grad():
            policy_kl = sequence_logps(net, mismatched, pad).logp_sum
        kl_ref = kto_reference_point(policy_kl, cache.score(mismatched).logp_sum.to(policy_kl.device))
        desirable = torch.tensor([unpaired[i].desirable for i in indices], device=scores.logp_sum.device)
        out = loss(KTOInputs(scores.logp_sum, cache.get(indices)[:, 0], desirable, kl_ref), options)
        metrics = {**batch_metrics(out), "kl_ref": float(kl_ref)}
        return LossOutput(out.losses.mean(), int(scores.lengths.sum()), metrics)

    loop = record.loop(start, hp, len(items), kto_loss if algorithm == "kto" else pair_loss)
    if cache is not None:
        cache.follow(loop.order.epoch_order(0), hp.batch_size * hp.gradient_accumulation_steps)
    final = loop.run()
    after = evaluate(model, reference or load_reference(untrained=False))
    extra = {"referenceSequencesScored": cache.computed_sequences} if cache is not None else {}
    return StageResult(checkpoint_uri=final.uri, metrics=record.metrics(loop, after, extra))
