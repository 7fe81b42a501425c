"""A plain directory in storage: what ``save_pretrained`` or ``huggingface-cli download`` leaves,
with no ``manifest.json``. Only its top-level files whose names pass a filter are read (a model
directory's config, weights and tokenizer, not an ``original/`` folder of pickles beside them);
nothing vouches for their content, so the caller checks it (``alignops.workloads.models.hf_dir``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from alignops.storage.base import ObjectStore, join_key


def directory_files(store: ObjectStore, key: str) -> list[str]:
    """Names of the files directly under ``key`` (no subdirectories), sorted."""
    prefix = key.strip("/") + "/" if key.strip("/") else ""
    return sorted(k[len(prefix):] for k in store.list_keys(key) if "/" not in k[len(prefix):])


def fetch_directory(store: ObjectStore, key: str, cache_dir: Path, wanted: Callable[[str], bool]) -> Path:
    """A local directory with the ``wanted`` top-level files under ``key``: the directory itself on a
    local store (read in place), else a download into ``cache_dir/key``."""
    in_place = store.local_path(key)
    if in_place is not None:
        return in_place
    target = Path(cache_dir) / key
    names = [name for name in directory_files(store, key) if wanted(name)]
    store.get_files((join_key(key, name), target / name) for name in names)
    target.mkdir(parents=True, exist_ok=True)
    return target
