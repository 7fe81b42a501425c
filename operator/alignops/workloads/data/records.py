"""Records as Python dicts that remember their place, for the demo generator's data and for the
line-by-line diagnosis of a JSON-lines file the ``datasets`` reader refused or read with mixed types
(``reading.py``): an error in a record names ``FILE:LINE`` (or ``generator NAME record N``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

from alignops.workloads.context import ConfigError


# the records file of a committed dataset directory (what a generate stage writes), and its report,
# written before the manifest too
DATASET_FILE = "data.jsonl"
GENERATION_REPORT = "generation.json"


class DatasetError(ConfigError, ValueError):
    """A dataset that cannot be read or has the wrong format (a configuration error)."""


T = TypeVar("T")


def error_detail(exc: Exception) -> str:
    """What went wrong in a record, in words: a KeyError is a missing field."""
    return f"field {exc.args[0]!r} is missing" if isinstance(exc, KeyError) else str(exc)


class Records(list):
    """A dataset's records (dicts) that remember where each came from, so that an error in one
    names its place: ``FILE:LINE`` for JSON lines, ``generator NAME record N`` for generated data,
    or the ``places`` given (``FILE row N``)."""

    def __init__(self, records: Iterable[dict], source: str, lines: list[int] | None = None,
                 places: Callable[[int], str] | None = None):
        super().__init__(records)
        self.source, self.lines, self.places = source, lines, places

    def place(self, index: int) -> str:
        if self.places is not None:
            return self.places(index)
        if self.lines is None:
            return f"{self.source} record {index + 1}"
        return f"{self.source}:{self.lines[index]}"

    def each(self, fn: Callable[[dict], T]) -> list[T]:
        """``fn`` over every record; a bad record fails as a DatasetError that names its place."""
        out = []
        for index, record in enumerate(self):
            try:
                if not isinstance(record, dict):
                    raise DatasetError(f"a record must be a JSON object, got {type(record).__name__}")
                out.append(fn(record))
            except (DatasetError, KeyError, TypeError, ValueError) as exc:
                raise DatasetError(f"{self.place(index)}: {error_detail(exc)}") from None
        return out


def json_lines(path: Path, name: str) -> Iterator[tuple[int, dict]]:
    """(line number, record) of every non-blank line of a JSON-lines file, read a line at a time;
    a line that is not UTF-8 or not JSON fails naming ``NAME:LINE``."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DatasetError(f"{name}:{number}: not UTF-8 (byte {raw[exc.start]:#04x}); save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{name}:{number}: not JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise DatasetError(f"{name}:{number}: a record must be a JSON object, got {type(record).__name__}")
            yield number, record


def json_lines_line(path: Path, row: int) -> int | None:
    """The line number of record ``row`` (0-based, blank lines skipped) of a JSON-lines file."""
    seen = -1
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if raw.strip():
                seen += 1
                if seen == row:
                    return number
    return None
