"""The round's update glue on a toy language model whose log-probs are known in closed form: the KL
term in the reward and in the loss, advantages, the first step's loss, micro-batch invariance, and
the deterministic orders of prompts and mini-batches. Values are derived in the comments."""

from __future__ import annotations

import dataclasses
import math
import types

import pytest
import torch
from torch.testing import assert_close

from alignops.api.rl import RlHyperparameters
from alignops.workloads.rl.prompts import round_prompts
from alignops.workloads.rl.trainer import logprob_gap
from alignops.workloads.rl.batch import pack
from alignops.workloads.rl.store import Rollout
from alignops.workloads.distributed import SINGLE
from alignops.workloads.training.loop import TrainLoop
from alignops.contract import DistributedRun
from alignops.workloads.rl.update import PolicyUpdate, RlPlan, minibatch_order, prepare_round


class ToyLM(torch.nn.Module):
    """logits[b, t] = table[input_ids[b, t]]: a bigram model over V tokens."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(table.clone())

    def forward(self, input_ids, attention_mask=None):
        return types.SimpleNamespace(logits=self.table[input_ids])


V = 4
UNIFORM = torch.zeros(V, V)  # p = 1/4 everywhere
REFERENCE = torch.tensor([[math.log(2), 0.0, 0.0, 0.0]] * V)  # p = 2/5, 1/5, 1/5, 1/5


def _hp(**values):
    return RlHyperparameters.model_validate({"samplesPerPrompt": 2, "maxNewTokens": 4, "batchSize": 8, **values})


def _batch():
    # one prompt [0]; responses A = [0, 1] (R = 1) and B = [1] (R = 0), one group
    return pack([[0], [0]], [[0, 1], [1]], pad_token_id=3, device="cpu")


def test_plan_defaults_follow_the_algorithm():
    grpo = RlPlan.resolve("grpo", _hp())
    assert (grpo.estimator, grpo.kl_placement, grpo.kl_estimator, grpo.use_critic) == ("grpo", "in_loss", "k3", False)
    ppo = RlPlan.resolve("ppo", _hp())
    assert (ppo.estimator, ppo.kl_placement, ppo.kl_estimator, ppo.use_critic) == ("gae", "in_reward", "k1", True)
    assert RlPlan.resolve("remax", _hp()).greedy_baseline
    assert not RlPlan.resolve("rloo", _hp(kl={"beta": 0})).use_reference


def test_kl_in_the_reward_then_rloo():
    hp = _hp(kl={"beta": 0.1})
    plan = RlPlan.resolve("rloo", hp)  # in_reward, k1
    tensors, metrics = prepare_round(plan, hp, ToyLM(UNIFORM), ToyLM(REFERENCE), None, _batch(),
                                     torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), None, kl_coef=0.1)
    # k1 = log pi - log pi_ref: target token 0: log(1/4) - log(2/5) = log(5/8); token 1: log(5/4)
    d0, d1 = math.log(5 / 8), math.log(5 / 4)
    assert metrics["kl"] == pytest.approx((d0 + d1 + d1) / 3, abs=1e-6)
    # shaped token rewards r_t = -0.1 k1_t (+ R on the last token); RLOO scores a response by
    # their sum: A: -0.1 (d0 + d1) + 1, B: -0.1 d1; with n = 2, A_i = R_i - R_j
    shaped_a, shaped_b = -0.1 * (d0 + d1) + 1.0, -0.1 * d1
    adv = shaped_a - shaped_b
    mask = tensors.batch.response_mask
    assert mask.tolist() == [[True, True], [True, False]]
    assert_close(tensors.advantages, torch.tensor([[adv, adv], [-adv, 0.0]]))
    # the uniform policy's entropy is log 4 at every position
    assert metrics["entropy"] == pytest.approx(math.log(4), abs=1e-6)
    # old log-probs are the uniform policy's
    assert_close(tensors.old_logp, torch.tensor([[math.log(0.25)] * 2, [math.log(0.25), 0.0]]))


def test_kl_in_the_loss_leaves_the_advantages_to_the_outcome():
    hp = _hp(kl={"beta": 0.1}, miniBatches=2)  # two steps a round: old log-probs come from their own pass
    plan = RlPlan.resolve("grpo", hp)  # in_loss, k3
    tensors, metrics = prepare_round(plan, hp, ToyLM(UNIFORM), ToyLM(REFERENCE), None, _batch(),
                                     torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), None, kl_coef=0.1)
    # GRPO on R = (1, 0): mean 0.5, unbiased std 1/sqrt(2): A = +-0.5 sqrt(2) / (1 + 1e-6 sqrt(2))
    a = 0.5 / (math.sqrt(0.5) + 1e-6)
    assert_close(tensors.advantages, torch.tensor([[a, a], [-a, 0.0]]))
    # k3 = exp(-d) + d - 1
    k3 = lambda d: math.exp(-d) + d - 1  # noqa: E731
    d0, d1 = math.log(5 / 8), math.log(5 / 4)
    assert metrics["kl"] == pytest.approx((k3(d0) + 2 * k3(d1)) / 3, abs=1e-6)


def _loop(model, hp, lr=0.1):
    """The stage's TrainLoop with plain SGD in its engine: a step then moves the weights by exactly
    lr * gradient, so runs that must take the same step can be compared exactly."""
    context = types.SimpleNamespace(world=SINGLE, config=types.SimpleNamespace(distributed=DistributedRun()))
    loop = TrainLoop(context, model, hp, None, lambda directory: None, total_steps=100)
    loop.engine.optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loop.engine.scheduler = torch.optim.lr_scheduler.LambdaLR(loop.engine.optimizer, lambda s: 1.0)
    return loop


def test_first_step_loss_is_minus_the_mean_advantage():
    hp = _hp(kl={"beta": 0.0})
    plan = RlPlan.resolve("rloo", hp)
    model = ToyLM(UNIFORM)
    tensors, _ = prepare_round(plan, hp, model, None, None, _batch(), torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), None, 0.0)
    # RLOO: A = +1 on A's two tokens, -1 on B's one; at ratio 1 the clipped surrogate is -A per
    # token; token_mean over the 3 tokens: -(1 + 1 - 1) / 3
    out = PolicyUpdate(plan, hp, model, None, _loop(model, hp)).step(tensors, torch.tensor([0, 1]), 0.0)
    assert out["policy_loss"] == pytest.approx(-1 / 3, abs=1e-6)
    assert out["clipped_tokens"] == 0.0 and out["tokens"] == 3.0


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm"])
def test_micro_batch_size_does_not_change_the_step(mode):
    torch.manual_seed(0)
    table = torch.randn(V, V)
    prompts = [[0], [1], [2], [0], [3], [1]]
    responses = [[1, 2, 3], [0], [2, 2], [3, 1, 0, 2], [1], [0, 0]]
    batch = pack(prompts, responses, pad_token_id=3, device="cpu")
    scores = torch.tensor([1.0, 0.0, 0.5, 0.2, 0.9, 0.1])
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    results = []
    for micro in (1, 2, 6):
        hp = _hp(batchSize=micro, lossAggregation=mode, kl={"beta": 0.2}, ppoEpochs=2)
        plan = RlPlan.resolve("grpo", hp)
        model = ToyLM(table)
        tensors, _ = prepare_round(plan, hp, model, ToyLM(torch.zeros(V, V)), None, batch, scores, groups, None, 0.2)
        # the same importance ratios as a later epoch would see: perturb the old log-probs
        tensors.old_logp = tensors.old_logp + 0.3 * batch.response_mask
        out = PolicyUpdate(plan, hp, model, None, _loop(model, hp)).step(tensors, torch.arange(6), 0.2)
        results.append((model.table.detach().clone(), out["loss"]))
    for table_after, loss in results[1:]:
        assert_close(table_after, results[0][0], atol=1e-6, rtol=1e-5)
        assert loss == pytest.approx(results[0][1], abs=1e-6)


def test_a_single_step_round_takes_its_old_log_probs_from_the_update():
    # one step per round: the update's own forward gives the old log-probs (ratio 1), with the same
    # step, the same entropy and KL figures and the same filled old log-probs as a separate pass
    torch.manual_seed(1)
    table = torch.randn(V, V)
    batch = pack([[0], [1], [2], [0]], [[1, 2], [0], [3, 1, 2], [2]], pad_token_id=3, device="cpu")
    scores, groups = torch.tensor([1.0, 0.0, 0.4, 0.6]), torch.tensor([0, 0, 1, 1])
    hp = _hp(kl={"beta": 0.2}, batchSize=2)
    results = []
    for reuse in (True, False):
        plan = RlPlan.resolve("grpo", hp)
        assert plan.old_from_update
        if not reuse:
            plan = dataclasses.replace(plan, old_from_update=False)
        model = ToyLM(table)
        tensors, prep = prepare_round(plan, hp, model, ToyLM(torch.zeros(V, V)), None, batch, scores, groups, None, 0.2)
        assert (tensors.old_logp is None) == reuse
        out = PolicyUpdate(plan, hp, model, None, _loop(model, hp)).run(tensors, 1, 0.2, lambda: None)
        figures = {**prep, **{k: out[k] for k in ("entropy", "kl") if k in out}}
        results.append((model.table.detach().clone(), tensors.old_logp, figures["entropy"], figures["kl"], out["loss"]))
    (table_a, old_a, ent_a, kl_a, loss_a), (table_b, old_b, ent_b, kl_b, loss_b) = results
    assert_close(table_a, table_b)
    assert_close(old_a, old_b)
    assert ent_a == pytest.approx(ent_b, abs=1e-6) and kl_a == pytest.approx(kl_b, abs=1e-6) and loss_a == pytest.approx(loss_b, abs=1e-6)
    # KL in the reward needs the old log-probs before the advantages: no shortcut then
    assert not RlPlan.resolve("rloo", _hp(kl={"beta": 0.1})).old_from_update
    assert not RlPlan.resolve("grpo", _hp(miniBatches=2)).old_from_update


def test_minibatch_order_covers_every_rollout_each_epoch_deterministically():
    hp = _hp(ppoEpochs=2, miniBatches=3, seed=4)
    steps = minibatch_order(hp, round_=5, size=10)
    assert len(steps) == 6 and [len(s) for s in steps] == [4, 3, 3, 4, 3, 3]
    for epoch in (steps[:3], steps[3:]):
        assert sorted(torch.cat(epoch).tolist()) == list(range(10))
    assert all(torch.equal(a, b) for a, b in zip(steps, minibatch_order(hp, 5, 10)))
    assert not all(torch.equal(a, b) for a, b in zip(steps, minibatch_order(hp, 6, 10)))
    # pairwise (p3o): pairs are permuted, each stays adjacent (2k, 2k+1) inside one mini-batch
    pairs = minibatch_order(hp, round_=5, size=10, unit=2)
    for epoch in (pairs[:3], pairs[3:]):
        assert sorted(torch.cat(epoch).tolist()) == list(range(10))
    for step in pairs:
        assert step[0::2].remainder(2).eq(0).all() and torch.equal(step[1::2], step[0::2] + 1)
    assert RlPlan.resolve("p3o", _hp(samplesPerPrompt=2)).pairwise and RlPlan.resolve("apa", _hp(kl={"beta": 0})).use_reference


def test_round_prompts_walk_seeded_permutations_without_repeats_within_an_epoch():
    prompts = [{"prompt": str(i)} for i in range(10)]
    hp = _hp(promptsPerRound=4, seed=1)
    rounds = [round_prompts(prompts, hp, r) for r in (1, 2, 3)]
    first_epoch = [p["prompt"] for r in rounds for p in r][:10]
    assert sorted(first_epoch) == [str(i) for i in range(10)]  # rounds 1-2 and half of 3: one epoch
    assert round_prompts(prompts, hp, 2) == rounds[1]


def test_logprob_gap():
    # engine [-1.0, -2.0] vs trainer [-1.5, -2.0]: |0.5| + 0 over 2 tokens; the second rollout has no
    # engine log-probs and is left out
    rollouts = [Rollout(0, "p", None, [0], [1, 2], "r", "stop", engine_logprobs=[-1.0, -2.0]),
                Rollout(0, "p", None, [0], [1], "r", "stop")]
    trainer = torch.tensor([[-1.5, -2.0], [-9.0, 0.0]])
    mask = torch.tensor([[True, True], [True, False]])
    assert logprob_gap(rollouts, trainer, mask) == pytest.approx(0.25)
    assert logprob_gap(rollouts[1:], trainer[1:], mask[1:]) is None


def test_kl_controller_fixed_adaptive_and_restored():
    from alignops.algos import AdaptiveKLController, FixedKLController
    from alignops.workloads.rl.update import kl_controller

    assert isinstance(kl_controller(_hp(kl={"beta": 0.1})), FixedKLController)
    adaptive = kl_controller(_hp(kl={"beta": 0.1, "target": 0.05, "horizon": 100}))
    assert isinstance(adaptive, AdaptiveKLController)
    # KL 0.1 is twice the target: error clipped to +0.2; 50 samples of a horizon of 100:
    # beta <- 0.1 * (1 + 0.2 * 50 / 100) = 0.11
    assert adaptive.update(0.1, 50) == pytest.approx(0.11)
    # a resumed stage starts from the coefficient its checkpoint saved
    assert kl_controller(_hp(kl={"beta": 0.1, "target": 0.05}), value=0.11).value == pytest.approx(0.11)
