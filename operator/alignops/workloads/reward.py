"""The reward stage: a Hugging Face ``AutoModelForSequenceClassification`` with ``num_labels=1``
(for the demo model a ``LlamaForSequenceClassification``: the transformer of the policy or base
model plus a scalar ``score`` head read at the last non-pad token), trained on comparisons.

Loss (``alignops.algos.REWARD_LOSSES``): ``bradley_terry`` over pairs (a K-wise ranking counts as
all its K(K-1)/2 pairs; margin from the pair's ``margin`` field or ``rewardMargin``), or
``plackett_luce`` over whole rankings (Zhu, Jiao, Jordan, arXiv:2301.11270; K = 2 is Bradley-
Terry). Without ``algorithm`` the data decides: plackett_luce when any record ranks more than two
responses, bradley_terry otherwise.

Checkpoints are saved with ``save_pretrained`` (config ``architectures:
[LlamaForSequenceClassification]``, ``num_labels: 1``, ``pad_token_id`` set) plus the tokenizer,
so the RL stages and any Hugging Face user load the reward model as it is.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, LlamaForSequenceClassification

from alignops.algos import REWARD_LOSSES, UnknownNameError
from alignops.api.common import Architecture
from alignops.api.hyperparameters import RewardHyperparameters
from alignops.workloads.comparisons import Comparison, to_comparisons, tokenize_response
from alignops.workloads.context import ConfigError, RunContext
from alignops.workloads.data import SftExample, load_records
from alignops.contract import StageResult
from alignops.workloads.evaluation import sft_batch
from alignops.workloads.modeling import build_model
from alignops.workloads.outcome import StageRecord
from alignops.workloads.pair_eval import HeldOutPairs, load_held_out_pairs
from alignops.workloads.policy import starting_policy
from alignops.workloads.sft import parse_hyperparameters
from alignops.workloads.training import LossOutput


def build_reward_model(arch: Architecture, tokenizer) -> LlamaForSequenceClassification:
    """The base architecture's transformer (the same weights ``build_model`` gives the policy)
    under a freshly initialised scalar head."""
    policy = build_model(arch, tokenizer)
    config = copy.deepcopy(policy.config)
    config.num_labels = 1
    model = LlamaForSequenceClassification(config)
    model.model.load_state_dict(policy.model.state_dict())
    return model


def load_reward_model(path: Path):
    """A sequence classifier from a checkpoint: a causal LM's (new ``score`` head) or a reward model's."""
    return AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1, dtype=torch.float32)


def reward_example(prompt: str, response: str, tokenizer, max_length: int) -> SftExample:
    """The SFT tokenisation; when pad and eos are one token (many HF tokenizers) the eos is dropped,
    or the head would read the token before it (it takes the last token that is not pad)."""
    example = tokenize_response(prompt, response, tokenizer, max_length)
    if tokenizer.pad_token_id == tokenizer.eos_token_id and example.input_ids[-1] == tokenizer.eos_token_id:
        example = SftExample(example.input_ids[:-1], example.labels[:-1])
    return example


def reward_scores(model, examples: list[SftExample], pad_token_id: int) -> torch.Tensor:
    """(N,) scalar rewards, one forward pass."""
    input_ids, _, attention = sft_batch(examples, pad_token_id, next(model.parameters()).device)
    return model(input_ids=input_ids, attention_mask=attention).logits[:, 0].float()


@torch.no_grad()
def evaluate(model, held: HeldOutPairs | None, pad_token_id: int, batch_size: int = 64) -> dict[str, float]:
    """Held-out pairwise accuracy (chosen scored above rejected) and mean reward margin."""
    if held is None:
        return {}
    model.eval()
    examples = held.chosen + held.rejected
    scores = torch.cat([reward_scores(model, examples[i : i + batch_size], pad_token_id) for i in range(0, len(examples), batch_size)])
    chosen, rejected = scores[: len(held)], scores[len(held) :]
    return {"accuracy": float((chosen > rejected).float().mean()), "rewardMargin": float((chosen - rejected).mean())}


def choose_algorithm(requested: str | None, comparisons: list[Comparison]) -> str:
    name = requested or ("plackett_luce" if any(len(c.responses) > 2 for c in comparisons) else "bradley_terry")
    try:
        REWARD_LOSSES.get(name)
    except UnknownNameError as exc:
        raise ConfigError(str(exc)) from None
    return name


def run(ctx: RunContext) -> StageResult:
    hp = parse_hyperparameters(RewardHyperparameters, ctx)
    if ctx.config.datasets is None:
        raise ConfigError("datasets.train is required for a reward stage")
    torch.manual_seed(hp.seed)  # the new score head's initialisation
    start = starting_policy(ctx, loader=load_reward_model, builder=build_reward_model)
    model, tokenizer = start.model, start.tokenizer
    model.config.pad_token_id = tokenizer.pad_token_id
    pad = tokenizer.pad_token_id
    try:
        train = to_comparisons(load_records(ctx.config.datasets.train, "pairs", options=ctx.storage_options))
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"training data: {exc}") from None
    algorithm = choose_algorithm(ctx.config.algorithm, train)
    loss_of = REWARD_LOSSES.get(algorithm)
    sequences = [[reward_example(c.prompt, r, tokenizer, hp.max_length) for r in c.responses] for c in train]
    held, _ = load_held_out_pairs(ctx, hp.eval_size, tokenizer, hp.max_length)
    record = StageRecord(ctx, start, lambda: evaluate(model, held, pad))

    def loss_fn(net, indices: list[int]) -> LossOutput:
        counts = [len(sequences[i]) for i in indices]
        flat = [example for i in indices for example in sequences[i]]
        scores = reward_scores(net, flat, pad)
        width = max(counts)
        # (B, K) scores best first; rows with fewer responses are masked
        mask = torch.tensor([[k < n for k in range(width)] for n in counts], device=scores.device)
        table = torch.zeros(mask.shape, dtype=scores.dtype, device=scores.device).masked_scatter(mask, scores)
        upper = torch.triu(torch.ones(width, width, dtype=torch.bool, device=scores.device), diagonal=1)
        pair_mask = upper & mask.unsqueeze(-1) & mask.unsqueeze(-2)  # [b, i, j]: i ranked above j
        better = table.unsqueeze(-1).expand(-1, -1, width)[pair_mask]
        worse = table.unsqueeze(-2).expand(-1, width, -1)[pair_mask]
        if algorithm == "plackett_luce":
            loss = loss_of(table, mask).mean()
        else:
            margins = torch.tensor([train[i].margin if train[i].margin is not None else hp.reward_margin for i in indices],
                                   dtype=scores.dtype, device=scores.device)
            margin = margins.view(-1, 1, 1).expand(-1, width, width)[pair_mask]
            loss = loss_of(better, worse, margin).mean()
        gap = (better - worse).detach()
        metrics = {"reward_accuracy": float((gap > 0).float().mean()), "reward_margin": float(gap.mean())}
        return LossOutput(loss=loss, tokens=sum(len(e.input_ids) for e in flat), metrics=metrics)

    loop = record.loop(start, hp, len(train), loss_fn)
    final = loop.run()
    after = evaluate(model, held, pad)
    return StageResult(checkpoint_uri=final.uri, metrics=record.metrics(loop, after))
