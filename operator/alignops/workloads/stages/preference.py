"""The preference stage: offline preference optimisation of a policy against a frozen reference.

``algorithm`` names a loss of ``alignops.algos.PREFERENCE_LOSSES``: dpo, cdpo, ipo, simpo, orpo
(on pairs; a ranking counts as all its pairs) or kto (on unpaired records; a pair counts as a
desirable and an undesirable example). The reference is ``reference`` if given, else the policy's
starting checkpoint (its own input, or the base model), never the stage's resumed checkpoint. Its
log-probs of the training sequences are computed once, lazily, and cached
(``alignops.workloads.models.reference``). What the stage does for a loss follows the loss's
registered traits (``PreferenceLossTraits``), never its name: reference-free losses (simpo, orpo)
load the reference only to report the KL after training; unpaired ones (kto) read labelled
examples and get KTO's batch-shifted reference point.

Held-out figures (before and after): ``accuracy`` (chosen log-prob above rejected; per-token mean
for simpo and orpo, whose losses compare means), ``implicitAccuracy`` (the loss's own implicit
rewards ranked right), chosen/rejected log-probs and their margin, ``kl`` (exact per-token KL to
the reference on held-out responses) and, on the demo task, ``answerAccuracy`` (greedy sums right).
"""

from __future__ import annotations

import torch

from alignops.algos import (
    PREFERENCE_LOSSES,
    KTOInputs,
    PreferenceInputs,
    PreferenceLossTraits,
    PreferenceOptions,
    UnknownNameError,
    dpo,
    kto_reference_point,
)
from alignops.api.hyperparameters import PreferenceHyperparameters
from alignops.workloads.context import ConfigError
from alignops.workloads.data.batching import to_device
from alignops.workloads.data.held_out import load_held_out_pairs
from alignops.workloads.data.sft import SftExample, response_tokens
from alignops.workloads.evaluation.pairs import answer_accuracy, pair_logps, preference_metrics, token_kl
from alignops.workloads.models.policy import Starting, starting_policy
from alignops.workloads.models.reference import ReferenceLogps, frozen_reference
from alignops.workloads.models.scoring import SequenceScores, sequence_logps
from alignops.workloads.stages.base import Stage
from alignops.workloads.training.loop import MicroBatchLoss, TrainLoop


def loss_options(hp: PreferenceHyperparameters) -> PreferenceOptions:
    return PreferenceOptions(
        beta=hp.beta, label_smoothing=hp.label_smoothing, ipo_length_normalize=hp.ipo_length_normalize,
        simpo_gamma=hp.simpo_gamma, orpo_lambda=hp.orpo_lambda,
        kto_desirable_weight=hp.kto_desirable_weight, kto_undesirable_weight=hp.kto_undesirable_weight,
        rpo_alpha=hp.rpo_alpha,
    )


def resolve_loss(algorithm: str, options: PreferenceOptions):
    """(the registered loss, its traits), after a dry run on one dummy example so that a bad name
    or option combination (dpo with labelSmoothing) fails at once as a configuration error."""
    try:
        loss = PREFERENCE_LOSSES.get(algorithm)
        traits: PreferenceLossTraits = PREFERENCE_LOSSES.traits(algorithm)
        one, zero = torch.ones(1), torch.zeros(1)
        if traits.paired:
            loss(PreferenceInputs(zero, zero, zero, zero, one, one), options)
        else:
            loss(KTOInputs(zero, zero, torch.ones(1, dtype=torch.bool), 0.0), options)
    except (UnknownNameError, ValueError, TypeError) as exc:
        raise ConfigError(f"preference loss: {exc}") from None
    return loss, traits


def batch_metrics(out) -> dict[str, torch.Tensor]:
    """The implicit rewards' figures as 0-dim device tensors (read back only at log steps)."""
    chosen, rejected = out.chosen_rewards.detach(), out.rejected_rewards.detach()
    metrics = {}
    if len(chosen) and len(chosen) == len(rejected):
        metrics["reward_accuracy"] = (chosen > rejected).float().mean()
        metrics["reward_margin"] = (chosen - rejected).mean()
    if len(chosen):
        metrics["reward_chosen"] = chosen.mean()
    if len(rejected):
        metrics["reward_rejected"] = rejected.mean()
    return metrics


def pair_loss(model, pairs: list[list[SftExample]], ref: torch.Tensor | None, loss_of, options: PreferenceOptions,
              pad_token_id: int) -> MicroBatchLoss:
    """A paired preference loss on one micro-batch of ``[chosen, rejected]`` examples, with the
    reference's summed log-probs ``ref`` (b, 2) (None for reference-free losses). Chosen and
    rejected go through the policy in one forward pass (TRL's concatenated forward)."""
    sequences = [p[0] for p in pairs] + [p[1] for p in pairs]
    scores = sequence_logps(model, sequences, pad_token_id)
    b = len(pairs)
    inputs = PreferenceInputs(
        policy_chosen_logps=scores.logp_sum[:b], policy_rejected_logps=scores.logp_sum[b:],
        ref_chosen_logps=ref[:, 0] if ref is not None else None, ref_rejected_logps=ref[:, 1] if ref is not None else None,
        chosen_lengths=scores.lengths[:b], rejected_lengths=scores.lengths[b:],
    )
    out = loss_of(inputs, options)
    logps = scores.logp_sum.detach()
    # figures stay on the device and tokens are counted on the host: no host sync per micro-batch
    metrics = {**batch_metrics(out), "logp_chosen": logps[:b].mean(), "logp_rejected": logps[b:].mean()}
    return MicroBatchLoss(out.losses.mean(), response_tokens(sequences), metrics)


class PreferenceStage(Stage):
    hyperparameters = PreferenceHyperparameters
    default_algorithm = "dpo"

    def check(self) -> None:
        self.options = loss_options(self.hp)
        self.loss_of, self.traits = resolve_loss(self.algorithm, self.options)

    def load_inputs(self) -> Starting:
        start = starting_policy(self.ctx)
        self.start = start
        self.reference = self.load_reference(untrained=True) if self.traits.needs_reference else None
        return start

    def load_reference(self, untrained: bool):
        return frozen_reference(self.ctx, self.start, untrained)

    def build_dataset(self) -> int:
        if self.traits.paired:
            self.items = self.training_data("pairs", "pairs").items
        else:
            self.items = self.training_data("unpaired", "unpaired").items
        if not len(self.items):
            raise ConfigError("the training data holds no comparisons")
        self.cache = ReferenceLogps(self.reference, self.items, self.pad, self.ctx.world) if self.reference is not None else None
        return len(self.items)

    def build_held_out(self) -> None:
        self.held, self.verifiable = load_held_out_pairs(self.ctx, self.hp.eval_size, self.tokenizer, self.hp.max_length,
                                                         self.data.carved)
        self.held_ref: tuple[SequenceScores, SequenceScores] | None = None

    def implicit_rewards(self, chosen: SequenceScores, rejected: SequenceScores):
        """The loss's output on the held-out pairs (its implicit rewards; KTO's are DPO's,
        beta * (log pi - log pi_ref), since held-out data are pairs)."""
        if not self.traits.needs_reference:
            return self.loss_of(PreferenceInputs(chosen.logp_sum, rejected.logp_sum, chosen_lengths=chosen.lengths,
                                                 rejected_lengths=rejected.lengths), self.options)
        self.held_ref = self.held_ref or pair_logps(self.reference, self.held, self.pad)
        ref_c, ref_r = self.held_ref
        if not self.traits.paired:
            return dpo(PreferenceInputs(chosen.logp_sum, rejected.logp_sum, ref_c.logp_sum, ref_r.logp_sum),
                       PreferenceOptions(beta=self.hp.beta))
        return self.loss_of(PreferenceInputs(chosen.logp_sum, rejected.logp_sum, ref_c.logp_sum, ref_r.logp_sum,
                                             chosen.lengths, rejected.lengths), self.options)

    def evaluate_with(self, model, kl_reference) -> dict[str, float]:
        if self.held is None:
            return {}
        chosen, rejected = pair_logps(model, self.held, self.pad)
        metrics = preference_metrics(chosen, rejected, self.traits.length_normalised)
        out = self.implicit_rewards(chosen, rejected)
        metrics["implicitAccuracy"] = float((out.chosen_rewards > out.rejected_rewards).float().mean())
        if self.traits.paired:
            metrics["evalLoss"] = float(out.losses.mean())
        held = self.held
        metrics["kl"] = token_kl(model, kl_reference, held.chosen + held.rejected, self.pad) if kl_reference is not None else 0.0
        if self.verifiable:
            metrics["answerAccuracy"] = answer_accuracy(model, self.tokenizer, held)
        return metrics

    def evaluate_before(self) -> dict[str, float]:
        # the untrained policy is its own reference (KL 0) unless another one was named
        named = self.ctx.config.inputs.reference is not None
        return self.evaluate_with(self.model, (self.reference or self.load_reference(untrained=True)) if named else None)

    def evaluate_after(self) -> dict[str, float]:
        return self.evaluate_with(self.model, self.reference or self.load_reference(untrained=False))

    def loss(self, model, indices: list[int]) -> MicroBatchLoss:
        return self.pair_loss(model, indices) if self.traits.paired else self.unpaired_loss(model, indices)

    def pair_loss(self, model, indices: list[int]) -> MicroBatchLoss:
        ref = self.cache.get(indices) if self.cache is not None else None
        return pair_loss(model, [self.items[i] for i in indices], ref, self.loss_of, self.options, self.pad)

    def unpaired_loss(self, model, indices: list[int]) -> MicroBatchLoss:
        items, cache, world = self.items, self.cache, self.ctx.world
        sequences = [items[i][0] for i in indices]
        scores = sequence_logps(model, sequences, self.pad)
        # KTO's reference point: completions shifted by one within the whole micro-batch (TRL), no
        # gradient; each process scores its share's mismatched pairs and the mean is global
        whole = self.loop.micro_batch if world.distributed else indices
        positions = range(world.rank, len(whole), world.size) if world.distributed else range(len(whole))
        mismatched = [items.mismatched(whole[j], whole[(j + 1) % len(whole)]) for j in positions]
        with torch.no_grad():
            policy_kl = sequence_logps(model, mismatched, self.pad).logp_sum
        ref_kl = cache.score(mismatched).logp_sum.to(policy_kl.device)
        if world.distributed:  # the mean over every process's pairs, then the clamp (as TRL does)
            count = torch.tensor(float(len(policy_kl)), dtype=torch.float64, device=policy_kl.device)
            total = world.sum(torch.stack([(policy_kl - ref_kl).sum().double(), count]))
            kl_ref = (total[0] / total[1]).clamp(min=0).float().detach()
        else:
            kl_ref = kto_reference_point(policy_kl, ref_kl)
        desirable = to_device(torch.tensor([items.row(i)["label"] for i in indices]), scores.logp_sum.device)
        out = self.loss_of(KTOInputs(scores.logp_sum, cache.get(indices)[:, 0], desirable, kl_ref), self.options)
        metrics = {**batch_metrics(out), "kl_ref": torch.as_tensor(kl_ref).detach()}
        return MicroBatchLoss(out.losses.mean(), response_tokens(sequences), metrics)

    def before_training(self, loop: TrainLoop) -> None:
        self.loop = loop
        if self.reference is not None:  # placed as the engine places models (sharded under ZeRO-3)
            self.reference = loop.engine.frozen(self.reference)
        if self.cache is not None:  # fill the reference cache in the order the first epoch reads
            self.cache.model = self.reference
            self.cache.follow(loop.order.epoch_order(0), self.hp.batch_size * self.hp.gradient_accumulation_steps)

    def extra_metrics(self) -> dict[str, float]:
        metrics = super().extra_metrics()
        if self.cache is not None:
            metrics["referenceSequencesScored"] = self.cache.computed_sequences
        return metrics


STAGE = PreferenceStage
