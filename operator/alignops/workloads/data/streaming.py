"""``streaming: true``: training data read, shuffled and tokenised as training goes, in bounded
memory, for files larger than memory (or than the scratch disk's Arrow copy).

The source is an ``IterableDataset`` (``datasets`` reads files in chunks); each record keeps its
row number (for errors: ``FILE:LINE``), the first ``evalSize`` records are the held-out split (when
no ``eval`` is given), the rest go through a seeded shuffle buffer (reshuffled each epoch) and the
view's batched tokenisation; items with nothing to learn are dropped and counted as they pass.

Training reads positions in order (``StreamOrder``: step k's micro-batch m is positions
``[(k*A + m)*B, (k*A + m + 1)*B)``), so only a window of tokenised items is held. A stream has no
length: the stage needs ``maxSteps``. Resuming replays the stream to the step's position (exact,
at the cost of reading again what was read).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterator

from alignops.api.common import DatasetSource
from alignops.workloads.context import ConfigError, RunContext
from alignops.workloads.data.reading import column_names, locate_source, open_located, unreadable
from alignops.workloads.data.records import DatasetError, Records
from alignops.workloads.data.tokenized import ROW, SftItems, TrainingData, check_format, tokenize
from alignops.workloads.data.views import VIEWS

SHUFFLE_BUFFER = 1000  # records held for the shuffle: what bounds memory beside the reader's chunk
STREAMED_VIEWS = ("sft",)


def _number_rows(batch: dict, indices: list[int]) -> dict:
    return {ROW: list(indices)}


class StreamedRows:
    """The tokenised stream as positions 0, 1, 2, ... over epochs; rows asked for must not go
    backwards more than ``window`` positions."""

    def __init__(self, stream, keep: str | None, name: str, json_lines=(), window: int = 4096):
        self.stream, self.keep, self.name, self.window = stream, keep, name, window
        self.json_lines = json_lines
        self.rows: OrderedDict[int, dict] = OrderedDict()
        self.next_position, self.epoch, self.dropped = 0, 0, 0
        self._iterator: Iterator[dict] | None = None

    def _next(self) -> dict:
        while True:
            if self._iterator is None:
                self.stream.set_epoch(self.epoch)
                self._iterator = iter(self.stream)
                self._yielded = 0
            try:
                row = next(self._iterator, None)
            except DatasetError:
                raise
            except Exception as exc:  # noqa: BLE001 - a chunk the reader could not parse, or not UTF-8
                raise unreadable(self.name, exc, self.json_lines) from None
            if row is None:
                if self._yielded == 0:
                    raise DatasetError(f"{self.name}: no example has a response token within maxLength "
                                       "(every prompt is as long or longer); raise hyperparameters.maxLength")
                self.epoch, self._iterator = self.epoch + 1, None
                continue
            if self.keep is not None and not row[self.keep]:
                if self.epoch == 0:
                    self.dropped += 1
                continue
            self._yielded += 1
            return row

    def row(self, position: int) -> dict:
        if position < self.next_position - self.window or (position not in self.rows and position < self.next_position):
            raise IndexError(f"position {position} of a stream was passed ({self.next_position} read)")
        while self.next_position <= position:
            self.rows[self.next_position] = self._next()
            self.next_position += 1
            while len(self.rows) > self.window:
                self.rows.popitem(last=False)
        return self.rows[position]


class StreamedSftItems(SftItems):
    """SFT items read from a stream by position (in order)."""

    def __init__(self, rows: StreamedRows):
        super().__init__(None)
        self.rows = rows

    def __len__(self) -> int:
        raise TypeError("a stream has no length")

    def row(self, index: int) -> dict:
        return self.rows.row(int(index))

    def response_tokens(self, indices: list[int]) -> int:
        return sum(self.row(i)["response_tokens"] for i in indices)

    def lengths(self) -> list[int]:
        raise TypeError("a stream has no length")


def streamed_training_data(ctx: RunContext, source: DatasetSource, view: str, tokenizer, max_length: int,
                           eval_size: int, default_format: str, seed: int, step_items: int) -> TrainingData:
    if view not in STREAMED_VIEWS:
        raise ConfigError(f"streaming is supported for {', '.join(STREAMED_VIEWS)} data; "
                          f"a {ctx.config.type} stage reads its data whole (drop streaming)")
    located = locate_source(source, ctx.storage_options, ctx.scratch, default_format)
    raw = open_located(located, ctx.scratch / "datasets-cache")
    name = raw.places.name
    stream = raw.dataset
    columns = column_names(stream)
    check_format(name, columns, view, ctx.config.type, source.format)
    stream = stream.map(_number_rows, batched=True, with_indices=True)
    carved = None
    datasets = ctx.config.datasets
    if datasets.eval is None and datasets.hold_out and VIEWS[view].carves(set(columns)):
        head = list(stream.take(eval_size))
        carved = Records([{k: v for k, v in r.items() if k != ROW} for r in head], name,
                         places=lambda i, rows=[r[ROW] for r in head]: raw.places.place(rows[i]))
        stream = stream.skip(eval_size)
    stream = stream.shuffle(seed=seed, buffer_size=SHUFFLE_BUFFER)
    stream = tokenize(stream, view, tokenizer, max_length, raw.places, key=None)
    rows = StreamedRows(stream, VIEWS[view].keep, name, raw.json_lines, max(4096, 2 * step_items))
    return TrainingData(StreamedSftItems(rows), 0, carved, streamed=True)
