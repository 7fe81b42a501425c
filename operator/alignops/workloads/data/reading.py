"""A ``DatasetSource`` opened as a Hugging Face ``datasets`` dataset, and where each of its rows
came from.

- ``uri`` to a ``.jsonl``/``.json``/``.parquet``/``.csv``/``.arrow`` file or a directory of shards
  (a dataset repository's layout and README configs are honoured, with ``subset`` and ``split``):
  ``file://`` is read in place, ``s3://`` is downloaded through the storage layer into scratch
  (credentials stay in the environment);
- ``hub: ORG/NAME`` at ``revision``: the repository snapshot in the Hugging Face cache, fetched with
  ``huggingface_hub`` (``HF_TOKEN``; with ``HF_HUB_OFFLINE=1`` only the cache is read: ``datasets``
  5.2 itself refuses every Hub name offline, so the snapshot is opened as a local directory);
- ``generator``: the demo task's records.

``streaming`` gives an ``IterableDataset`` that reads as it is iterated. ``Places`` names a row's
place in errors: ``FILE:LINE`` for JSON lines, ``FILE row N`` for the other formats.
"""

from __future__ import annotations

import os
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignops.api.common import DatasetSource
from alignops.demo import generate
from alignops.storage import MANIFEST_NAME, StorageOptions, fetch_checkpoint
from alignops.storage.base import join_key
from alignops.storage.checkpoints import ChecksumMismatch
from alignops.storage.locate import locate
from alignops.storage.manifest import sha256_file
from alignops.workloads.data.records import DATASET_FILE, GENERATION_REPORT, DatasetError, json_lines, json_lines_line

# file extension -> the ``datasets`` builder that reads it
FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


@dataclass(frozen=True)
class DataFile:
    path: str  # on this machine
    name: str  # as errors name it: the URI, or the file inside a Hub repository


def _row_count(file: DataFile) -> int:
    """Rows of one data file, as ``datasets`` reads them (only counted to name a bad row)."""
    path = file.path
    if _json_lines_file(path):
        with open(path, "rb") as handle:
            return sum(1 for line in handle if line.strip())
    if path.endswith(".json"):
        import json

        data = json.loads(Path(path).read_bytes())
        return len(data) if isinstance(data, list) else len(next(iter(data.values()), []))
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    if path.endswith(".csv"):
        import pyarrow.csv as pcsv

        return sum(batch.num_rows for batch in pcsv.open_csv(path))
    import pyarrow as pa

    with pa.memory_map(path) as source:  # Arrow IPC: the stream format (datasets') or the file format
        try:
            return sum(batch.num_rows for batch in pa.ipc.open_stream(source))
        except pa.ArrowInvalid:
            source.seek(0)
            reader = pa.ipc.open_file(source)
            return sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))


def _is_json_lines(path: str) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(4096).lstrip()
    return head.startswith(b"{")


@dataclass
class Places:
    """Where row ``i`` of a dataset came from. ``removed`` (sorted raw rows) are rows taken out
    (the held-out split), ``kept`` the only rows left (the held-out split itself)."""

    name: str
    files: tuple[DataFile, ...] = ()
    removed: tuple[int, ...] = ()
    kept: tuple[int, ...] | None = None
    _ends: list[int] | None = field(default=None, repr=False)

    def without(self, rows: list[int]) -> "Places":
        return Places(self.name, self.files, tuple(sorted(rows)), None)

    def only(self, rows: list[int]) -> "Places":
        return Places(self.name, self.files, (), tuple(sorted(rows)))

    def raw_row(self, index: int) -> int:
        if self.kept is not None:
            return self.kept[index]
        row = index
        for removed in self.removed:  # the n-th row not removed
            if removed <= row:
                row += 1
            else:
                break
        return row

    def place(self, index: int) -> str:
        row = self.raw_row(index)
        if not self.files:
            return f"{self.name} record {row + 1}"
        if len(self.files) == 1:
            file, offset = self.files[0], 0
        else:
            if self._ends is None:
                total, self._ends = 0, []
                for f in self.files:
                    total += _row_count(f)
                    self._ends.append(total)
            at = min(bisect_right(self._ends, row), len(self.files) - 1)
            file, offset = self.files[at], (self._ends[at - 1] if at else 0)
        local = row - offset
        if _json_lines_file(file.path):
            line = json_lines_line(Path(file.path), local)
            if line is not None:
                return f"{file.name}:{line}"
        return f"{file.name} row {local + 1}"


@dataclass
class RawData:
    """An opened source: the dataset (``Dataset`` or, streaming, ``IterableDataset``), its places,
    and its JSON-lines files (for a line-by-line diagnosis)."""

    dataset: Any
    places: Places
    json_lines: tuple[DataFile, ...] = ()
    records: list[dict] | None = None  # the generator's records, as they are


def _datasets():
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    return datasets


def _local_files(source: DatasetSource, options: StorageOptions | None, scratch: Path) -> tuple[Path, str, tuple]:
    """(local path of the file or directory, the name errors give it, what identifies its content)."""
    uri = source.uri
    try:
        store, key = locate(uri, options)
        committed = _committed_dataset(store, key, uri, scratch)
        if committed is not None:  # a generate stage's output: read only once verified
            return committed, uri, (key, committed.stat().st_size, sha256_file(committed))
        local = store.local_path(key)
        if local is not None:
            if not local.exists():
                raise DatasetError(f"dataset {uri} not found: no such file or directory")
            files = sorted(p for p in local.rglob("*") if p.is_file()) if local.is_dir() else [local]
            stats = tuple((str(p.relative_to(local)) if local.is_dir() else p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)
            return local, uri, stats
        target = scratch / "datasets-raw" / key
        keys = [k for k in store.list_keys(key) if not k.endswith("/")]
        if keys:  # a prefix: a directory of shards
            moved = store.get_files((k, target / k[len(key):].lstrip("/")) for k in keys)
            return target, uri, tuple((k, m.size, m.sha256) for k, m in zip(keys, moved))
        moved = store.get_file(key, target)
        return target, uri, ((key, moved.size, moved.sha256),)
    except FileNotFoundError as exc:  # the storage layer's ObjectNotFound among them
        raise DatasetError(f"dataset {uri} not found: {exc}") from None


def _committed_dataset(store, key: str, uri: str, scratch: Path) -> Path | None:
    """The data file of a committed dataset directory (what a ``generate`` stage writes: files
    first, manifest last), verified against its manifest; None when ``key`` is no such directory."""
    if not store.exists(join_key(key, MANIFEST_NAME)):
        if store.exists(join_key(key, GENERATION_REPORT)):  # written before the manifest: an unfinished commit
            raise DatasetError(f"dataset {uri} is a generate stage's output that was never committed (no {MANIFEST_NAME}); "
                               "rerun that stage, or read its output with fromStage")
        return None
    try:
        directory = fetch_checkpoint(store, key, scratch / "datasets-committed")
    except ChecksumMismatch as exc:
        raise DatasetError(f"dataset {uri}: {exc}") from None
    path = directory / DATASET_FILE
    if not path.is_file():
        raise DatasetError(f"dataset {uri}: the committed directory has no {DATASET_FILE}")
    return path


def _hub_snapshot(source: DatasetSource) -> tuple[Path, str]:
    """The Hub repository's snapshot directory in the Hugging Face cache (downloaded if online)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    revision = source.revision or "main"
    try:
        path = snapshot_download(source.hub, repo_type="dataset", revision=revision)
    except LocalEntryNotFoundError:
        raise DatasetError(
            f"hub dataset {source.hub}@{revision} is not in the Hugging Face cache and the Hub is offline "
            "(HF_HUB_OFFLINE=1): download it into HF_HOME first, or let the stage reach the Hub") from None
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise DatasetError(f"hub dataset {source.hub}@{revision}: {type(exc).__name__} (check the name, the "
                           "revision, and HF_TOKEN for a gated or private dataset)") from None
    return Path(path), f"{source.hub}@{revision}"


def _csv_as_text(path: Path) -> dict:
    """For CSV data, every column read as text (pandas would make "1" a number; a label or a margin
    is parsed where it is read)."""
    import csv

    files = sorted(p for p in path.rglob("*.csv")) if path.is_dir() else [path]
    if not files or files[0].suffix.lower() != ".csv" or (path.is_dir() and any(
            p.suffix.lower() in FORMATS and p.suffix.lower() != ".csv" for p in path.rglob("*"))):
        return {}
    with open(files[0], newline="", encoding="utf-8", errors="replace") as handle:
        header = next(csv.reader(handle), [])
    from datasets import Features, Value

    return {"features": Features({name: Value("string") for name in header})} if header else {}


def _builder_for_file(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise DatasetError(f"{path.name}: unknown dataset file type {suffix or '(none)'}; use .jsonl, .json, .parquet, .csv or .arrow")
    return FORMATS[suffix]


def _open(path: Path, source: DatasetSource, cache_dir: Path, name: str, shown: str):
    """(dataset, its data files) of a local file or directory."""
    datasets = _datasets()
    split = source.split or "train"
    extra = _csv_as_text(path)
    try:
        if path.is_dir():
            builder = datasets.load_dataset_builder(str(path), name=source.subset, cache_dir=str(cache_dir), **extra)
        else:
            builder = datasets.load_dataset_builder(_builder_for_file(path), data_files={"train": [str(path)]},
                                                    cache_dir=str(cache_dir), **extra)
    except (ValueError, FileNotFoundError) as exc:
        raise DatasetError(f"{shown}: {exc}") from None
    available = builder.config.data_files or {}
    if split not in available:
        raise DatasetError(f"{shown} has no split {split!r}; it has {', '.join(sorted(available)) or 'none'} (set split)")
    files = tuple(
        DataFile(str(f), f"{name}/{Path(str(f)).relative_to(path).as_posix()}" if path.is_dir() else name)
        for f in available[split]
    )
    if source.streaming:
        return builder.as_streaming_dataset(split=split), files
    builder.download_and_prepare()
    return builder.as_dataset(split=split), files


@dataclass
class Located:
    """A source found on this machine: the local file or directory (a generator's records), the
    name errors give it, and what identifies its content (for the tokenised-data cache)."""

    source: DatasetSource
    path: Path | None
    name: str
    identity: tuple
    records: list[dict] | None = None


def locate_source(source: DatasetSource, options: StorageOptions | None, scratch: Path, default_format: str,
                  held_out: bool = False) -> Located:
    """Find (download, for S3 and the Hub) the source's data."""
    if source.generator is not None:
        fmt = source.format or default_format
        records = generate(fmt, source.size, source.seed, held_out=held_out, max_operand=source.max_operand,
                           task=source.generator)
        name = f"generator {source.generator}{' (held out)' if held_out else ''}"
        return Located(source, None, name, ("generator", fmt, held_out), records)
    if source.from_stage is not None and source.uri is None:
        raise DatasetError(f"dataset fromStage {source.from_stage!r} is not resolved: that stage has no committed output yet")
    if source.hub is not None:
        path, name = _hub_snapshot(source)
        return Located(source, path, name, ("hub", name, path.name))
    path, name, identity = _local_files(source, options, scratch)
    return Located(source, path, name, identity)


def open_located(located: Located, cache_dir: Path) -> RawData:
    """The located data as a ``datasets`` dataset (an ``IterableDataset`` when streaming), its
    columns renamed by ``fields``."""
    source = located.source
    if located.records is not None:
        return RawData(_datasets().Dataset.from_list(located.records), Places(located.name), records=located.records)
    shown = source.uri or f"hub dataset {located.name}"
    try:
        dataset, files = _open(located.path, source, cache_dir, located.name, shown)
    except DatasetError:
        raise
    except Exception as exc:  # noqa: BLE001 - what the datasets builders raise on unreadable files varies
        raise unreadable(located.name, exc, _json_lines_files(located.path, located.name)) from None
    raw = RawData(dataset, Places(located.name, files), tuple(f for f in files if _json_lines_file(f.path)))
    return rename_fields(raw, source)


def open_source(source: DatasetSource, options: StorageOptions | None, scratch: Path, default_format: str,
                held_out: bool = False) -> RawData:
    return open_located(locate_source(source, options, scratch, default_format, held_out), scratch / "datasets-cache")


def _json_lines_file(path: str) -> bool:
    return path.endswith(".jsonl") or (path.endswith(".json") and _is_json_lines(path))


def _json_lines_files(path: Path, name: str) -> tuple[DataFile, ...]:
    if path.is_dir():
        return tuple(DataFile(str(p), f"{name}/{p.relative_to(path).as_posix()}") for p in sorted(path.rglob("*"))
                     if p.is_file() and _json_lines_file(str(p)))
    return (DataFile(str(path), name),) if _json_lines_file(str(path)) else ()


def unreadable(name: str, exc: Exception, files: tuple[DataFile, ...]) -> DatasetError:
    """The error for data ``datasets`` could not read: JSON-lines files are read again line by line
    to name the first bad line; otherwise the reader's own reason."""
    records = sum(1 for file in files for _ in json_lines(Path(file.path), file.name))
    if files and not records:
        return DatasetError(f"{name} has no records")
    cause = exc.__cause__ or exc.__context__ or exc
    return DatasetError(f"{name}: cannot be read ({type(cause).__name__}: {str(cause)[:300]})")


def column_names(dataset) -> list[str]:
    names = dataset.column_names
    if names is None:  # a stream whose columns are only known once read
        first = next(iter(dataset), None)
        names = list(first) if first is not None else []
    return list(names)


def rename_fields(raw: RawData, source: DatasetSource) -> RawData:
    """Rename the dataset's columns by ``fields`` ({name the stage reads: column}); a column that
    does not exist is an error naming the columns there are."""
    renames = source.fields.renames() if source.fields is not None else {}
    if not renames:
        return raw
    columns = column_names(raw.dataset)
    missing = [column for column in renames if column not in columns]
    if missing:
        wanted = {column: name for column, name in renames.items()}
        raise DatasetError(f"{raw.places.name}: fields.{wanted[missing[0]]} names column `{missing[0]}`, which the "
                           f"data does not have; its columns: {', '.join(columns)}")
    dataset = raw.dataset
    shadowed = [name for name in renames.values() if name in columns and name not in renames]
    if shadowed:  # the dataset has its own column by that name: the mapped one wins
        dataset = dataset.remove_columns(shadowed)
    raw.dataset = dataset.rename_columns(renames)
    return raw


def processes(rows: int) -> int | None:
    """Tokeniser processes for ``rows`` records: one (no pool) for small data, else up to 8."""
    if rows < 50_000:
        return None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(8, cpus) if cpus > 1 else None
