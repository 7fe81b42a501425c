"""The spin stage: SPIN, self-play fine-tuning (Chen et al. 2024, arXiv:2401.01335), in iterations
(rounds, ``alignops.workloads.stages.iterative``) on SFT data only.

Iteration t: the policy pi_t answers the round's ``promptsPerRound`` SFT prompts
(``samplesPerPrompt`` answers each; the paper: 1). Every answer that differs from the record's SFT
response y becomes a pair (chosen y, rejected y'), duplicates of one prompt once; answers equal to y
(as text) carry no signal and are counted (``matches``). The policy is then trained on the pairs
with the ``algorithm``'s paired loss (``dpo`` is SPIN's logistic loss) against pi_t as the reference:

    loss = -log sigma(beta * [(logpi(y) - logpi_t(y)) - (logpi(y') - logpi_t(y'))])

pi_t's log-probs of the round's pairs are computed before the round's first step, so pi_t needs
no second copy of the model. The round's checkpoint is pi_{t+1}, the next iteration's opponent
and reference.

Round record keys: ``pairs``, ``matches`` (answers equal to the SFT response), ``reward_mean``
(the share of such answers), ``loss``, ``reward_accuracy``, ``reward_margin``, ``logp_chosen``,
``logp_rejected``. Status metrics: ``accuracyBefore``/``accuracyAfter`` (held-out greedy accuracy,
demo task), ``rewardFirst``/``rewardLast`` (the share of answers equal to the SFT response in the
first and last round), ``lossFirst``, ``loss``, ``rounds``, ``steps``, ``pairs``.
"""

from __future__ import annotations

import torch

from alignops.api.iterative import SpinHyperparameters
from alignops.workloads.context import ConfigError
from alignops.workloads.data.held_out import held_out_records, read_records
from alignops.workloads.data.sft import sft_prompt_and_response
from alignops.workloads.models.scoring import sequence_logps_batched
from alignops.workloads.rl.rewards import ScoringBatch
from alignops.workloads.rl.store import RoundRollouts
from alignops.workloads.stages.iterative import IterativeStage, rollout_example, token_example
from alignops.workloads.stages.preference import loss_options, pair_loss, resolve_loss


def matches_sft(batch: ScoringBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """1 where the policy's answer is the SFT response (as text, outer whitespace aside), else 0."""
    same = torch.tensor([r.strip() == (a or "").strip() for r, a in zip(batch.responses, batch.answers)], dtype=torch.float32)
    return same, {"matches_sft": same}


class SpinStage(IterativeStage):
    hyperparameters = SpinHyperparameters
    default_algorithm = "dpo"
    history_keys = ("pairs", "matches")

    def check(self) -> None:
        self.options = loss_options(self.hp)
        self.loss_of, self.traits = resolve_loss(self.algorithm, self.options)
        if not self.traits.paired:
            raise ConfigError(f"spin trains on pairs; {self.algorithm} takes unpaired examples")

    def load_prompts(self) -> tuple[list[dict], list[dict]]:
        """The SFT records as prompts whose ``answer`` is the SFT response; the held-out prompts of
        the demo generator's held-out split (answers verifiable)."""
        ctx = self.ctx
        if ctx.config.datasets is None:
            raise ConfigError("datasets.train is required for a spin stage (sft records: prompt/completion or messages)")
        records = read_records(ctx, ctx.config.datasets.train, "sft")
        train = records.each(lambda r: dict(zip(("prompt", "answer"), sft_prompt_and_response(r, self.tokenizer))))
        held, verifiable = held_out_records(ctx, self.hp.eval_size, "sft", None)
        held = [{"prompt": r["prompt"], "answer": r["completion"]} for r in held] if held and verifiable else []
        return train, held

    def scorer(self):
        return matches_sft

    def train_round(self, batch: RoundRollouts) -> dict[str, float]:
        tok, max_length = self.tokenizer, self.hp.max_length
        items, seen = [], set()
        for r in batch.rollouts:
            key = (r.group, tuple(r.response_ids))
            if r.score >= 1.0 or key in seen:
                continue
            seen.add(key)
            sft_ids = tok(r.answer, add_special_tokens=False).input_ids + [tok.eos_token_id]
            items.append([token_example(r.prompt_ids, sft_ids, max_length), rollout_example(r, max_length)])
        figures = {"pairs": float(len(items)), "matches": float(sum(r.score for r in batch.rollouts))}
        ref = None
        if items and self.traits.needs_reference:
            # the reference is pi_t, the policy as it starts the iteration: score the pairs now
            flat = [example for pair in items for example in pair]
            ref = sequence_logps_batched(self.model, flat, self.pad, self.hp.batch_size).logp_sum.float().view(-1, 2)
        figures.update(self.train_steps(len(items), lambda model, idx: pair_loss(
            model, [items[i] for i in idx], ref[idx] if ref is not None else None, self.loss_of, self.options, self.pad)))
        return figures

    def totals(self) -> dict[str, float]:
        return {"pairs": self.history_sum("pairs")}


STAGE = SpinStage
