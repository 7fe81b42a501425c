"""The training loop's parts on their own: TrainState save/restore, the plain engine behind the
seam (each trained model clipped on its own), one optimizer_step against a hand-written PyTorch
step, the data order and the seed streams."""

from __future__ import annotations

import types

import pytest
import torch

from alignops.api.hyperparameters import SftHyperparameters
from alignops.contract import DistributedRun, StageResult
from alignops.seeds import EPOCH, GENERATE_CALL, MINIBATCH_EPOCH, RECORD_FORMAT, ROUND, derive_seed
from alignops.workloads.distributed import SINGLE
from alignops.workloads.training.engine import PlainEngine, Trainable
from alignops.workloads.training.loop import MicroBatchLoss, TrainLoop, read_back
from alignops.workloads.training.order import DataOrder, epoch_permutation
from alignops.workloads.training.state import TrainState


def _hp(**values):
    return SftHyperparameters.model_validate({"learningRate": 0.1, "warmupSteps": 0, "lrScheduler": "constant",
                                              "maxGradNorm": 1.0, "maxSteps": 10, **values})


# what TrainLoop reads of a stage run's context when it never commits
CONTEXT = types.SimpleNamespace(world=SINGLE, config=types.SimpleNamespace(distributed=DistributedRun()))


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))


X = torch.tensor([[1.0, -2.0, 0.5], [0.0, 1.0, 1.0], [2.0, 0.0, -1.0], [-1.0, -1.0, 3.0]])


def _loss(model, rows):
    return MicroBatchLoss(model(X[rows]).pow(2).mean(), len(rows), {"rows": float(len(rows))})


def test_optimizer_step_is_the_plain_pytorch_step():
    hp = _hp(gradientAccumulationSteps=2)
    ours, theirs = _model(), _model()
    loop = TrainLoop(CONTEXT, ours, hp, None, lambda d: None, total_steps=10)
    out = loop.optimizer_step([[0, 1], [2, 3]], lambda rows: _loss(ours, rows), lambda rows: 0.5)

    # the same step written out: AdamW, mean of the two micro-batch losses, clip to 1, one step
    optimizer = torch.optim.AdamW(theirs.parameters(), lr=0.1, weight_decay=hp.weight_decay)
    losses = [theirs(X[r]).pow(2).mean() for r in ([0, 1], [2, 3])]
    for loss in losses:
        (loss / 2).backward()
    norm = torch.nn.utils.clip_grad_norm_(list(theirs.parameters()), 1.0)
    optimizer.step()

    assert float(out.loss) == pytest.approx(sum(float(l.detach()) for l in losses) / 2)
    assert out.grad_norms == [pytest.approx(float(norm))]
    assert out.tokens == 4 and out.metrics == {"rows": 2.0}  # (2 + 2) / 2
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b)
    assert (loop.state.step, loop.state.tokens_seen) == (1, 4)
    loop._settle_loss()  # read back at log steps and commits, not every step
    assert loop.state.last_loss == pytest.approx(float(out.loss))


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_an_optimizer_step_never_reads_a_tensor_back(monkeypatch):
    # on a GPU every float()/item() waits for the queue to drain: the loop sums on the device
    model = _model()
    loop = TrainLoop(CONTEXT, model, _hp(gradientAccumulationSteps=2), None, lambda d: None, total_steps=10)

    def loss(rows):
        value = model(X[rows]).pow(2).mean()
        return MicroBatchLoss(value, len(rows), {"half": value.detach() / 2})

    # the optimizer itself is exempt: CPU AdamW reads its step counter, a host tensor (fused CUDA
    # AdamW keeps it on the device)
    in_optimizer, step = [], loop.engine.optimizer.step
    monkeypatch.setattr(loop.engine.optimizer, "step", lambda: in_optimizer.append(1) or step() or in_optimizer.pop())
    originals = {name: getattr(torch.Tensor, name) for name in ("item", "__float__", "__bool__", "tolist")}

    def refusing(name):
        def read(tensor, *args):
            assert in_optimizer, f"Tensor.{name} read a value back during the step"
            return originals[name](tensor, *args)
        return read

    with monkeypatch.context() as patch:
        for name in originals:
            patch.setattr(torch.Tensor, name, refusing(name))
        out = loop.optimizer_step([[0, 1], [2, 3]], loss, lambda rows: 0.5)
    record = read_back({"loss": out.loss, "grad_norm": out.grad_norms[0], **out.metrics, "step": 1})
    assert all(type(v) in (float, int) for v in record.values())
    assert record["half"] == pytest.approx(record["loss"] / 2)


def test_each_trained_model_is_clipped_on_its_own():
    # model 0's gradient is tiny, model 1's huge: one clip over both would shrink model 0's too
    first, second = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    a, b = first.weight, second.weight
    with torch.no_grad():
        a.fill_(1.0)
        b.fill_(1.0)
    engine = PlainEngine([Trainable(first), Trainable(second, "critic", 1e-9)], _hp(learningRate=1e-9), 10)
    engine.zero_grad()
    engine.backward([(0.5 * a).sum(), (300.0 * b).sum()])
    norms = engine.step(max_grad_norm=1.0)
    assert norms == [pytest.approx(0.5), pytest.approx(300.0)]
    assert float(a.grad) == pytest.approx(0.5)  # under the limit: untouched
    assert float(b.grad) == pytest.approx(1.0)  # clipped to norm 1 alone


def test_train_state_restores_optimizer_scheduler_rng_and_position(tmp_path):
    hp = _hp(lrScheduler="linear", warmupSteps=2)
    model = _model()
    loop = TrainLoop(CONTEXT, model, hp, None, lambda d: None, total_steps=10)
    model.save_pretrained = lambda directory, safe_serialization, state_dict: torch.save(state_dict, f"{directory}/w.pt")
    for _ in range(3):
        loop.optimizer_step([[0, 1, 2, 3]], lambda rows: _loss(model, rows))
    loop.state.round = 4
    loop._settle_loss()
    loop.state.save(tmp_path)
    expected_next = torch.rand(3)  # drawn after the save: a restored RNG draws it again
    lr = loop.engine.learning_rate()

    other = _model(seed=1)
    other.load_state_dict(torch.load(tmp_path / "w.pt"))
    restored = TrainState(PlainEngine([Trainable(other)], hp, 10), total_steps=10)
    restored.restore(tmp_path)
    assert (restored.step, restored.tokens_seen, restored.last_loss) == (3, 12, loop.state.last_loss)
    assert restored.engine.learning_rate() == lr
    assert torch.equal(torch.rand(3), expected_next)
    saved = loop.engine.optimizer.state_dict()["state"]
    for key, value in restored.engine.optimizer.state_dict()["state"].items():
        for name in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(value[name], saved[key][name]), name
    assert sorted(saved) == sorted(restored.engine.optimizer.state_dict()["state"])


def test_data_order_is_a_pure_function_of_seed_and_epoch():
    order = DataOrder(size=5, batch_size=2, accumulation=1, seed=3)
    # step 2 reads positions 4 and 5: the last of epoch 0, then the first of epoch 1
    first, second = epoch_permutation(5, 3, 0), epoch_permutation(5, 3, 1)
    assert order.micro_batch(2, 0) == [first[4], second[0]]
    assert sorted(first) == list(range(5)) and first != second
    assert DataOrder(5, 2, 1, seed=3).micro_batch(7, 0) == order.micro_batch(7, 0)


def test_seed_streams_keep_their_formulas():
    # the streams the recipes' numbers were measured with, written out by hand
    assert derive_seed(7, (EPOCH, 2)) == 7 * 100_003 + 2
    assert derive_seed(7, (ROUND, 3), (MINIBATCH_EPOCH, 1)) == (7 * 1_000_003 + 3) * 101 + 1
    assert derive_seed(7, (ROUND, 3), (GENERATE_CALL, 500)) == (7 * 1_000_003 + 3) * 1_000 + 500
    assert derive_seed(7, (RECORD_FORMAT, 1)) == 7 * 7919 + 1
    assert derive_seed(2**31 - 1, (ROUND, 2**31), (GENERATE_CALL, 10**6), (EPOCH, 9)) < 2**63


def test_result_decode_reads_what_encode_wrote():
    text = StageResult("s3://b/k", {"loss": 0.25, "steps": 3}, "done").encode()
    assert StageResult.decode(text) == StageResult("s3://b/k", {"loss": 0.25, "steps": 3.0}, "done")
    assert StageResult.decode("") is None and StageResult.decode("[1]") is None and StageResult.decode("{") is None
    assert StageResult.decode('{"metrics": {"a": "x", "b": "2"}}').metrics == {"b": 2.0}
