"""The rl stage's prompts: training prompts (``prompt`` or chat ``messages``, and ``answer`` for the
verifiers), the held-out prompts with answers, and which prompts each round reads."""

from __future__ import annotations

from alignops.api.rl import RlHyperparameters
from alignops.demo import DemoTask, task_of
from alignops.workloads.context import ConfigError, RunContext
from alignops.workloads.data.records import DatasetError, load_records
from alignops.workloads.data.sft import text_field
from alignops.workloads.data.held_out import held_out_source
from alignops.workloads.training.order import epoch_permutation


def prompt_text(record: dict, tokenizer) -> str:
    """A prompt record's text: ``prompt``, or chat ``messages`` through the tokenizer's template."""
    if "prompt" in record:
        return text_field(record, "prompt")
    if "messages" in record:
        return tokenizer.apply_chat_template(record["messages"], tokenize=False, add_generation_prompt=True)
    raise DatasetError(f"a prompt record needs `prompt` or `messages`; got keys {sorted(record)}")


def load_prompts(ctx: RunContext, hp: RlHyperparameters, tokenizer) -> tuple[list[dict], list[dict]]:
    """(training prompts, held-out prompts with answers): records ``{"prompt", "answer"}``."""
    if ctx.config.datasets is None:
        raise ConfigError("datasets.train is required for an rl stage (records with `prompt`, and `answer` for verifiers)")
    options = ctx.storage_options
    records = load_records(ctx.config.datasets.train, "prompts", options=options)
    train = records.each(lambda r: {"prompt": prompt_text(r, tokenizer), "answer": r.get("answer")})
    source, verifiable = held_out_source(ctx, hp.eval_size)
    held = load_records(source, "prompts", held_out=verifiable, options=options) if source is not None else []
    held = [{"prompt": prompt_text(r, tokenizer), "answer": str(r["answer"])} for r in held if r.get("answer") is not None]
    return train, held


def held_out_task(ctx: RunContext, hp: RlHyperparameters) -> DemoTask:
    """The demo task whose check scores the held-out greedy answers (the arithmetic one for files)."""
    source, _ = held_out_source(ctx, hp.eval_size)
    return task_of(source.generator if source is not None else None)


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
