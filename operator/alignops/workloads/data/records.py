"""Dataset records: JSON lines from storage, or the demo task's generators."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Callable, Iterable, TypeVar

from alignops.api.common import DatasetSource
from alignops.demo import generate
from alignops.storage import MANIFEST_NAME, StorageOptions, fetch_checkpoint
from alignops.storage.base import join_key
from alignops.storage.checkpoints import ChecksumMismatch
from alignops.storage.locate import locate
from alignops.workloads.context import ConfigError


# the records file of a committed dataset directory (what a generate stage writes)
DATASET_FILE = "data.jsonl"


class DatasetError(ConfigError, ValueError):
    """A dataset that cannot be read or has the wrong format (a configuration error)."""


T = TypeVar("T")


class Records(list):
    """A dataset's records (dicts) that remember where each came from, so that an error in one
    names its place: ``FILE:LINE`` for JSON lines, ``generator NAME record N`` for generated data."""

    def __init__(self, records: Iterable[dict], source: str, lines: list[int] | None = None):
        super().__init__(records)
        self.source, self.lines = source, lines

    def place(self, index: int) -> str:
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
                detail = f"field {exc.args[0]!r} is missing" if isinstance(exc, KeyError) else str(exc)
                raise DatasetError(f"{self.place(index)}: {detail}") from None
        return out


def _committed_dataset(store, key: str, uri: str) -> bytes | None:
    """The data file of a committed dataset directory (a generate stage's output), verified against
    its manifest; None when ``key`` is no such directory."""
    if not store.exists(join_key(key, MANIFEST_NAME)):
        return None
    with tempfile.TemporaryDirectory(prefix="alignops-dataset-") as cache:
        try:
            directory = fetch_checkpoint(store, key, Path(cache))
        except ChecksumMismatch as exc:
            raise DatasetError(f"dataset {uri}: {exc}") from None
        path = directory / DATASET_FILE
        if not path.is_file():
            raise DatasetError(f"dataset {uri}: the committed directory has no {DATASET_FILE}")
        return path.read_bytes()


def load_records(source: DatasetSource, default_format: str, held_out: bool = False,
                 options: StorageOptions | None = None) -> Records:
    fmt = source.format or default_format
    if source.generator is not None:
        records = generate(fmt, source.size, source.seed, held_out=held_out, max_operand=source.max_operand, task=source.generator)
        return Records(records, f"generator {source.generator}{' (held out)' if held_out else ''}")
    if source.uri is None:
        raise DatasetError(f"dataset fromStage {source.from_stage!r} is not resolved: that stage has no committed output yet")
    store, key = locate(source.uri, options)
    try:
        data = _committed_dataset(store, key, source.uri)
        if data is None:
            data = store.get_bytes(key)
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise DatasetError(f"dataset {source.uri} not found (a JSON-lines file, or a directory with {MANIFEST_NAME}): {exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DatasetError(f"{source.uri}:{line}: not UTF-8 (byte {data[exc.start]:#04x}); save the file as UTF-8") from None
    records, lines = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{source.uri}:{number}: not JSON ({exc.msg})") from None
            lines.append(number)
    if not records:
        raise DatasetError(f"{source.uri} has no records")
    return Records(records, source.uri, lines)
