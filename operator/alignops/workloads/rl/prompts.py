"""The rl stage's prompts: training prompts (``prompt`` as text or a conversation, or chat
``messages``, and ``answer`` for the verifiers; any format with a prompt will do), the held-out
prompts with answers, and which prompts each round reads."""

from __future__ import annotations

from alignops.api.rl import RlHyperparameters
from alignops.demo import DemoTask, task_of
from alignops.workloads.context import ConfigError, RunContext
from alignops.workloads.data.chat import Chat
from alignops.workloads.data.held_out import held_out_records
from alignops.workloads.data.training import training_data
from alignops.workloads.data.views import prompt_item
from alignops.workloads.rl.rewards import NEEDS_ANSWER, default_terms
from alignops.workloads.training.order import epoch_permutation


def load_prompts(ctx: RunContext, hp: RlHyperparameters, tokenizer, scored_by_rewards: bool = True) -> tuple[list[dict], list[dict]]:
    """(training prompts, held-out prompts with answers): records ``{"prompt", "answer"}``. Every
    training prompt needs its ``answer`` where a reward function that reads one scores the samples
    (``scored_by_rewards``: not when an LLM judge does)."""
    if ctx.config.datasets is None:
        raise ConfigError("datasets.train is required for an rl stage (records with `prompt`, and `answer` for verifiers)")
    terms = hp.rewards or default_terms(ctx.config.inputs.reward_model is not None)
    needs_answer = scored_by_rewards and any(t.name in NEEDS_ANSWER for t in terms)
    view = "answered_prompts" if needs_answer else "prompts"
    data = training_data(ctx, view, tokenizer, hp.max_prompt_length, hp.eval_size, "prompts")
    records, _ = held_out_records(ctx, hp.eval_size, "prompts", data.carved)
    chat = Chat(tokenizer)
    try:
        held = [item for item in (records.each(lambda r: prompt_item(r, chat)) if records else []) if item["answer"] is not None]
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"held-out data: {exc}") from None
    return data.items, held


def held_out_task(ctx: RunContext, hp: RlHyperparameters) -> DemoTask:
    """The demo task whose check scores the held-out greedy answers (the arithmetic one for files)."""
    datasets = ctx.config.datasets
    source = datasets.eval if datasets.eval is not None else datasets.train
    return task_of(source.generator)


def round_prompts(prompts: list[dict], hp: RlHyperparameters, round_: int) -> list[dict]:
    """Round n reads prompts [(n-1)P, nP) of an endless sequence of seeded permutations of the data."""
    size = len(prompts)
    orders: dict[int, list[int]] = {}
    out = []
    for i in range((round_ - 1) * hp.prompts_per_round, round_ * hp.prompts_per_round):
        epoch, index = divmod(i, size)
        if epoch not in orders:
            orders[epoch] = epoch_permutation(size, hp.seed, epoch)
        out.append(prompts[orders[epoch][index]])
    return out
