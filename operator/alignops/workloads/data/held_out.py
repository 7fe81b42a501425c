"""Each stage's held-out data: ``datasets.eval`` when given, else the demo generator's held-out
split (disjoint from every training set), else none (the stage reports no held-out figures)."""

from __future__ import annotations

from dataclasses import dataclass

from alignops.api.common import DatasetSource
from alignops.workloads.context import ConfigError, RunContext
from alignops.workloads.data.comparisons import Comparison, to_comparisons, to_pairs
from alignops.workloads.data.records import load_records
from alignops.workloads.data.sft import SftExample, tokenize_response


def held_out_source(ctx: RunContext, size: int) -> tuple[DatasetSource | None, bool]:
    """The held-out source and whether it is a generator's held-out split (verifiable answers)."""
    datasets = ctx.config.datasets
    if datasets is None:
        raise ConfigError("datasets.train is required for this stage")
    if datasets.eval is not None:
        return datasets.eval, datasets.eval.generator is not None
    if datasets.train.generator is not None:
        return datasets.train.model_copy(update={"size": size}), True
    return None, False


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
            [tokenize_response(p.prompt, p.responses[0], tokenizer, max_length) for p in pairs],
            [tokenize_response(p.prompt, p.responses[1], tokenizer, max_length) for p in pairs],
        )

    def __len__(self) -> int:
        return len(self.pairs)


def load_held_out_pairs(ctx: RunContext, size: int, tokenizer, max_length: int) -> tuple[HeldOutPairs | None, bool]:
    """The stage's held-out pairs and whether they are the demo generator's verifiable split.

    ``datasets.eval`` (pairs or rankings; a ranking counts as all its pairs) if given; else, for a
    generated training set, ``size`` pairs of the generator's held-out split, whatever the training
    format; else None."""
    source, verifiable = held_out_source(ctx, size)
    if source is None:
        return None, False
    if ctx.config.datasets.eval is None:
        source = source.model_copy(update={"format": "pairs"})
    try:
        records = load_records(source, "pairs", held_out=verifiable, options=ctx.storage_options)
        pairs = to_pairs(to_comparisons(records))
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"held-out data: {exc}") from None
    return HeldOutPairs.build(pairs, tokenizer, max_length), verifiable
