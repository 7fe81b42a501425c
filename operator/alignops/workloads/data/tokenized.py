"""A stage's training data, tokenised: read (``reading.py``), checked against what the stage reads
(``views.py``), the held-out split carved out, tokenised in batches (``Dataset.map(batched=True,
num_proc=...)``, one tokenizer call per batch), items with nothing to learn within maxLength
dropped and counted, and kept between attempts (``cache.py``). Items are read back by index from
the memory-mapped Arrow table, so a dataset larger than memory trains without being held in it.

``streaming: true`` goes through ``streaming.py`` instead: the same views over an
``IterableDataset``, tokenised as training reads it.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignops.api.common import DatasetFields, DatasetSource
from alignops.workloads.context import RunContext
from alignops.workloads.data.cache import DataCache, fingerprint, tokenizer_fingerprint
from alignops.workloads.data.chat import Chat
from alignops.workloads.data.reading import (
    Places, RawData, column_names, locate_source, open_located, processes, unreadable,
)
from alignops.workloads.data.records import DatasetError, Records, error_detail, json_lines
from alignops.workloads.data.sft import SftExample, for_reward, join
from alignops.workloads.data.views import VIEWS, View

DROPPED_WARNING_SHARE = 0.1
HELD_OUT_SHARE = 0.1  # at most this share of the training records is carved out as held-out data
HELD_OUT_SEED = 3_000_017  # folded into the source's seed: the carve draws from its own stream
ROW = "__row__"  # a streamed record's row number, kept through the shuffle for errors
READ_COLUMNS = frozenset(DatasetFields.model_fields) | {ROW}


@dataclass
class TrainingData:
    """What a stage trains on: ``items`` (indexable; a stream's are read in order), how many were
    dropped for length, and the held-out records carved from the training data (None when
    ``datasets.eval`` or a generator provides them, or nothing was carved)."""

    items: Any
    dropped: int
    carved: Records | None = None
    streamed: bool = False

    def __len__(self) -> int:
        return len(self.items)

    @property
    def dropped_examples(self) -> int:
        """Items dropped for length (a stream's: those passed so far in its first epoch)."""
        return self.items.rows.dropped if self.streamed else self.dropped


# -- the formats a stage reads -------------------------------------------------------------------

def data_format(columns: list[str]) -> str | None:
    """The record format the columns make (TRL's formats; ``None`` when none)."""
    cols = set(columns)
    if {"chosen", "rejected"} <= cols:
        return "pairs"
    if {"responses", "ranking"} <= cols:
        return "rankings"
    if {"prompt", "completion", "label"} <= cols:
        return "unpaired"
    if "messages" in cols or "text" in cols or {"prompt", "completion"} <= cols:
        return "sft"
    if "prompt" in cols:
        return "prompts"
    return None


def check_format(name: str, columns: list[str], view_name: str, stage: str, given: str | None) -> None:
    """Refuse at once data whose columns cannot make what the stage reads, naming the columns."""
    view = VIEWS[view_name]
    found = data_format(columns)
    if given is not None and given not in view.formats:
        raise DatasetError(f"{name}: format {given} is not what a {stage} stage reads ({', '.join(sorted(view.formats))})")
    if found is None or found not in view.formats:
        kind = f" ({found} records)" if found else ""
        raise DatasetError(
            f"{name} has columns {', '.join(columns) or '(none)'}{kind}; a {stage} stage reads "
            f"{' or '.join(sorted(view.formats))} records (map other column names with fields, e.g. fields: {{prompt: question}})")


def _has_json_columns(feature) -> bool:
    """Whether ``datasets`` found a column of mixed types (it then keeps values as JSON)."""
    if type(feature).__name__ == "Json":
        return True
    if isinstance(feature, dict):
        return any(_has_json_columns(f) for f in feature.values())
    inner = getattr(feature, "feature", None)
    return inner is not None and _has_json_columns(inner)


def diagnose(raw: RawData, view: View, chat: Chat) -> None:
    """Read JSON-lines files again record by record and fail at the first bad one, naming
    ``FILE:LINE`` and the field (a column of mixed types is how a number among strings shows)."""
    for file in raw.json_lines:
        for line, record in json_lines(Path(file.path), file.name):
            try:
                view.items(record, chat)
            except (DatasetError, KeyError, TypeError, ValueError) as exc:
                raise DatasetError(f"{file.name}:{line}: {error_detail(exc)}") from None


# -- tokenising ----------------------------------------------------------------------------------

def tokenize_batch(batch: dict[str, list], indices: list[int], view: str, tokenizer, max_length: int,
                   places: Places) -> dict[str, list]:
    """``Dataset.map`` function: a batch of records -> the view's token columns. A bad record fails
    naming its place and the field."""
    spec, chat = VIEWS[view], Chat(tokenizer)
    indices = batch.pop(ROW, None) or indices
    names = list(batch)
    items: list = []
    for k, index in enumerate(indices):
        record = {n: batch[n][k] for n in names}
        try:
            items += spec.items(record, chat)
        except (DatasetError, KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"{places.place(index)}: {error_detail(exc)}") from None
    return spec.encode(items, tokenizer, max_length)


def tokenize(dataset, view: str, tokenizer, max_length: int, places: Places, key: str | None,
             num_proc: int | None = None):
    """The view's token columns of every record (``map(batched=True)``; ``num_proc`` processes for
    large data; lazily for a stream)."""
    columns = column_names(dataset)
    unread = [c for c in columns if c not in READ_COLUMNS]
    if unread:  # columns no stage reads never become Python objects (a stream's filler, a Hub set's extras)
        dataset = dataset.remove_columns(unread)
    kwargs = dict(fn_kwargs=dict(view=view, tokenizer=tokenizer, max_length=max_length, places=places),
                  batched=True, with_indices=True, remove_columns=[c for c in columns if c not in unread],
                  features=VIEWS[view].features())
    if key is None:  # an IterableDataset: mapped as it is read
        return dataset.map(tokenize_batch, **kwargs)
    # the fingerprint names the result's cache file: given, so the tokenizer is not hashed; never
    # read back by ``datasets`` itself (an attempt's reuse is ``cache.py``'s, verified)
    return dataset.map(tokenize_batch, num_proc=num_proc, new_fingerprint=key, load_from_cache_file=False, **kwargs)


def column_sum(dataset, name: str) -> int:
    import pyarrow.compute as pc

    return int(pc.sum(dataset.data.column(name).cast("int64")).as_py() or 0)


def drop_unlearnable(tokenised, view_name: str, name: str, max_length: int):
    """(items with something to learn within maxLength, how many were dropped). None left is a
    configuration error, not a run that trains on loss 0; a large share dropped is a warning."""
    view = VIEWS[view_name]
    if view.keep is None:
        return tokenised, 0
    total = len(tokenised)
    kept_count = column_sum(tokenised, view.keep)
    if total and not kept_count:
        raise DatasetError(f"{name}: {view.nothing_left.format(max_length=max_length)}")
    if "empty" in tokenised.column_names and total:
        learning_and_empty = tokenised.filter(lambda keep, empty: [a and b for a, b in zip(keep, empty)],
                                              input_columns=[view.keep, "empty"], batched=True)
        if len(learning_and_empty) == kept_count:
            raise DatasetError(f"{name}: every completion is empty; nothing to learn but end-of-sequence "
                               "(check the `completion` field or the assistant turns)")
    dropped = total - kept_count
    if dropped > DROPPED_WARNING_SHARE * total:
        what = ("examples have no response token" if view_name == "sft"
                else "items have no response token, or responses that differ,")
        print(f"warning: {name}: {dropped} of {total} {what} within maxLength {max_length} and are skipped; "
              "raise hyperparameters.maxLength to keep them", file=sys.stderr)
    if dropped:  # a filter leaves an index mapping over the old table: write the rows kept out
        tokenised = tokenised.filter(lambda keep: keep, input_columns=[view.keep], batched=True).flatten_indices()
    return tokenised, dropped


# -- items read back by index ----------------------------------------------------------------------

def sft_item(row: dict) -> SftExample:
    return SftExample(row["input_ids"], row["labels"], row["source"], row["empty"])


class SftItems(Sequence):
    """Tokenised SFT examples by index."""

    def __init__(self, dataset):
        self.dataset = dataset
        self._response_tokens = None

    def __len__(self) -> int:
        return len(self.dataset)

    def row(self, index: int) -> dict:
        return self.dataset[int(index)]

    def __getitem__(self, index: int) -> SftExample:
        return sft_item(self.row(index))

    def take(self, indices: list[int]) -> list[SftExample]:
        return [self[i] for i in indices]

    def response_tokens(self, indices: list[int]) -> int:
        """Response (learnt) tokens of the items: the normaliser of a step's token-mean loss."""
        if self._response_tokens is None:  # one column, read once (4 bytes an item)
            self._response_tokens = self.dataset.data.column("response_tokens").to_numpy()
        return int(sum(int(self._response_tokens[int(i)]) for i in indices))

    def lengths(self) -> list[int]:
        import pyarrow.compute as pc

        return pc.list_value_length(self.dataset.data.column("input_ids")).to_pylist()


class ResponseItems(Sequence):
    """Tokenised comparisons (or unpaired completions) by index: item ``i`` is one sequence per
    response, prompt masked, best first; with a ``reward_tokenizer``, a trailing eos that is also
    pad is dropped (``sft.for_reward``)."""

    def __init__(self, dataset, max_length: int, reward_tokenizer=None):
        self.dataset, self.max_length, self.reward_tokenizer = dataset, max_length, reward_tokenizer

    def __len__(self) -> int:
        return len(self.dataset)

    def row(self, index: int) -> dict:
        return self.dataset[int(index)]

    def __getitem__(self, index: int) -> list[SftExample]:
        row = self.row(index)
        examples = [join(row["prompt_ids"], r, self.max_length) for r in row["responses"]]
        tokenizer = self.reward_tokenizer
        return [for_reward(e, tokenizer) for e in examples] if tokenizer is not None else examples

    def mismatched(self, prompt_of: int, response_of: int) -> SftExample:
        """Item ``prompt_of``'s prompt with item ``response_of``'s first response (KTO's reference point)."""
        return join(self.row(prompt_of)["prompt_ids"], self.row(response_of)["responses"][0], self.max_length)

    def rewards(self, index: int) -> list[float]:
        """The given scores, else K-1 for the best down to 0 for the worst."""
        row = self.row(index)
        k = len(row["responses"])
        return list(row["scores"]) if row.get("scores") is not None else [float(k - 1 - i) for i in range(k)]

    def width(self) -> int:
        """The most responses of any item."""
        import pyarrow.compute as pc

        if not len(self.dataset):
            return 0
        return int(pc.max(pc.list_value_length(self.dataset.data.column("responses"))).as_py())


def items_of(view: str, dataset, max_length: int, reward_tokenizer=None):
    if view == "sft":
        return SftItems(dataset)
    if view in ("prompts", "answered_prompts"):
        return dataset.to_list()
    return ResponseItems(dataset, max_length, reward_tokenizer)


# -- the whole path ------------------------------------------------------------------------------

def carve(raw: RawData, eval_size: int, seed: int) -> tuple[Any, Places, Records | None]:
    """(training rows, their places, held-out records): min(evalSize, 10%) of the records, drawn
    with a seeded permutation, disjoint from the rows left for training."""
    import numpy as np

    from alignops.seeds import derive_seed

    total = len(raw.dataset)
    size = min(eval_size, int(total * HELD_OUT_SHARE))
    if size <= 0:
        return raw.dataset, raw.places, None
    order = np.random.default_rng(derive_seed(seed, (HELD_OUT_SEED, 1))).permutation(total)
    held = sorted(int(i) for i in order[:size])
    keep = np.setdiff1d(np.arange(total), np.asarray(held))
    records = Records(raw.dataset.select(held).to_list(), raw.places.name, places=raw.places.only(held).place)
    return raw.dataset.select(keep), raw.places.without(held), records


def _save(directory: Path, dataset, dropped: int, carved: Records | None) -> None:
    dataset.save_to_disk(str(directory / "train"))
    meta = {"dropped": dropped, "carved": list(carved) if carved is not None else None,
            "source": carved.source if carved is not None else None}
    (directory / "meta.json").write_text(json.dumps(meta))


def _load(directory: Path, view: str, max_length: int, reward_tokenizer) -> TrainingData:
    from datasets import load_from_disk

    meta = json.loads((directory / "meta.json").read_text())
    carved = Records(meta["carved"], meta["source"]) if meta["carved"] is not None else None
    dataset = load_from_disk(str(directory / "train"))
    return TrainingData(items_of(view, dataset, max_length, reward_tokenizer), meta["dropped"], carved)


def tokenized_training_data(ctx: RunContext, view: str, tokenizer, max_length: int, eval_size: int,
                            default_format: str, reward: bool = False) -> TrainingData:
    """The stage's tokenised training data (from the cache when an earlier attempt made it)."""
    datasets = ctx.config.datasets
    source: DatasetSource = datasets.train
    reward_tokenizer = tokenizer if reward else None
    carving = datasets.eval is None and source.generator is None and datasets.hold_out
    located = locate_source(source, ctx.storage_options, ctx.scratch, default_format)
    key = fingerprint(view, located.identity, source.model_dump(mode="json"), max_length,
                      eval_size if carving else None, tokenizer_fingerprint(tokenizer))
    cache = DataCache(ctx, view, key) if source.generator is None else None
    if cache is not None and (directory := cache.load()) is not None:
        print(f"training data: tokenised {view} data from {cache.uri}", file=sys.stderr)
        return _load(directory, view, max_length, reward_tokenizer)
    started = time.perf_counter()
    raw = open_located(located, ctx.scratch / "datasets-cache")
    name = raw.places.name
    check_format(name, column_names(raw.dataset), view, ctx.config.type, source.format if source.generator is None else None)
    if raw.json_lines and _has_json_columns(raw.dataset.features):
        diagnose(raw, VIEWS[view], Chat(tokenizer))
    carving = carving and VIEWS[view].carves(set(column_names(raw.dataset)))
    try:
        rows, places, carved = carve(raw, eval_size, source.seed) if carving else (raw.dataset, raw.places, None)
        tokenised = tokenize(rows, view, tokenizer, max_length, places, key, processes(len(rows)))
    except UnicodeDecodeError as exc:  # Arrow's JSON reader keeps bytes; Python finds they are no text
        raise unreadable(name, exc, raw.json_lines) from None
    tokenised, dropped = drop_unlearnable(tokenised, view, name, max_length)
    if cache is not None:
        directory = ctx.scratch / "data-cache-new" / key
        _save(directory, tokenised, dropped, carved)
        cache.save(directory)
        shutil.rmtree(directory, ignore_errors=True)
        print(f"training data: {len(tokenised)} {view} items of {name} tokenised in "
              f"{time.perf_counter() - started:.1f}s, kept at {cache.uri}", file=sys.stderr)
    return TrainingData(items_of(view, tokenised, max_length, reward_tokenizer), dropped, carved)
