"""Each stage's held-out data: ``datasets.eval`` when given (its first evalSize records), else the
demo generator's held-out split (disjoint from every training set), else the split carved from the
training data (``tokenized.carve``: seeded, disjoint), else none (no held-out figures)."""

from __future__ import annotations

from dataclasses import dataclass

from alignops.api.common import DatasetSource
from alignops.workloads.context import ConfigError, RunContext
from alignops.workloads.data.chat import Chat
from alignops.workloads.data.comparisons import Comparison, record_kind, to_comparisons, to_pairs
from alignops.workloads.data.reading import locate_source, open_located, unreadable
from alignops.workloads.data.records import DatasetError, Records
from alignops.workloads.data.sft import SftExample, tokenize_response


def read_records(ctx: RunContext, source: DatasetSource, default_format: str, held_out: bool = False,
                 limit: int | None = None) -> Records:
    """A small dataset as records (at most ``limit``), each naming its place in errors."""
    located = locate_source(source, ctx.storage_options, ctx.scratch, default_format, held_out)
    if located.records is not None:
        return Records(located.records, located.name)
    raw = open_located(located, ctx.scratch / "datasets-cache")
    dataset = raw.dataset
    try:
        if source.streaming:
            rows = list(dataset.take(limit)) if limit is not None else list(dataset)
        else:
            rows = dataset.select(range(min(limit, len(dataset)))).to_list() if limit is not None else dataset.to_list()
    except UnicodeDecodeError as exc:
        raise unreadable(located.name, exc, raw.json_lines) from None
    return Records(rows, located.name, places=raw.places.place)


def held_out_records(ctx: RunContext, size: int, default_format: str, carved: Records | None,
                     generated_format: str | None = None) -> tuple[Records | None, bool]:
    """(held-out records, whether they are the demo generator's verifiable split). A generated
    split is ``size`` records of ``generated_format`` (default: the training data's format)."""
    datasets = ctx.config.datasets
    if datasets is None:
        raise ConfigError("datasets.train is required for this stage")
    if datasets.eval is not None:
        generated = datasets.eval.generator is not None
        return read_records(ctx, datasets.eval, default_format, held_out=generated,
                            limit=None if generated else size), generated
    train = datasets.train
    if train.generator is not None:
        source = train.model_copy(update={"size": size, "format": generated_format or train.format})
        return read_records(ctx, source, default_format, held_out=True), True
    return carved, False


@dataclass(frozen=True)
class HeldOutPairs:
    """Held-out comparisons as pairs, chosen and rejected responses tokenised."""

    pairs: list[Comparison]
    chosen: list[SftExample]
    rejected: list[SftExample]

    @classmethod
    def build(cls, pairs: list[Comparison], tokenizer, max_length: int) -> "HeldOutPairs":
        return cls(
            pairs,
            [tokenize_response(p.prompt, p.responses[0], tokenizer, max_length, p.chat) for p in pairs],
            [tokenize_response(p.prompt, p.responses[1], tokenizer, max_length, p.chat) for p in pairs],
        )

    def __len__(self) -> int:
        return len(self.pairs)


def _comparable(record: dict) -> bool:
    try:
        return record_kind(record) != "unpaired"
    except DatasetError:
        return True  # let the conversion name what is wrong


def load_held_out_pairs(ctx: RunContext, size: int, tokenizer, max_length: int,
                        carved: Records | None = None) -> tuple[HeldOutPairs | None, bool]:
    """The stage's held-out pairs and whether they are the demo generator's verifiable split.

    ``datasets.eval`` (pairs or rankings; a ranking counts as all its pairs) if given; else, for a
    generated training set, ``size`` pairs of the generator's held-out split, whatever the training
    format; else the pairs and rankings among the records carved from training; else None."""
    try:
        records, verifiable = held_out_records(ctx, size, "pairs", carved, generated_format="pairs")
        if records is not None and records is carved:
            records = Records([r for r in records if _comparable(r)], records.source)
        if not records:
            return None, False
        pairs = to_pairs(to_comparisons(records, Chat(tokenizer)))
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"held-out data: {exc}") from None
    return HeldOutPairs.build(pairs, tokenizer, max_length), verifiable
