"""Dataset records: JSON lines from storage, or the demo task's generators."""

from __future__ import annotations

import json

from alignops.api.common import DatasetSource
from alignops.demo import generate
from alignops.storage import StorageOptions
from alignops.storage.locate import locate
from alignops.workloads.context import ConfigError


class DatasetError(ConfigError, ValueError):
    """A dataset that cannot be read or has the wrong format (a configuration error)."""


def load_records(source: DatasetSource, default_format: str, held_out: bool = False,
                 options: StorageOptions | None = None) -> list[dict]:
    fmt = source.format or default_format
    if source.generator is not None:
        return generate(fmt, source.size, source.seed, held_out=held_out, max_operand=source.max_operand)
    store, key = locate(source.uri, options)
    try:
        text = store.get_bytes(key).decode()
    except FileNotFoundError as exc:
        raise DatasetError(f"dataset {source.uri} not found: {exc}") from None
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{source.uri} line {number}: not JSON ({exc.msg})") from None
    if not records:
        raise DatasetError(f"{source.uri} has no records")
    return records
