"""The checkpoint commit protocol over any ObjectStore.

A checkpoint is a directory of Hugging Face files under
``<stage_key>/[round-<n>/]checkpoint-<step>/``. ``manifest.json`` is written last and is the only
proof of a commit: a directory without it (an interrupted upload) is never listed, never read, and
is overwritten by the next attempt.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alignops.storage.base import ObjectNotFound, ObjectStore, StorageError, join_key
from alignops.storage.layout import checkpoint_key, parse_checkpoint_key
from alignops.storage.manifest import MANIFEST_NAME, Manifest, ManifestFile, checkpoint_files


class ChecksumMismatch(StorageError):
    """A file read back differs from what the manifest committed."""


class NotCommitted(StorageError):
    """No committed checkpoint at a key: no manifest.json (never written, or an upload cut short)."""

    permanent = True


@dataclass(frozen=True)
class CheckpointRef:
    key: str
    uri: str
    step: int
    round: int | None

    @property
    def order(self) -> tuple[int, int]:
        return (self.round if self.round is not None else -1, self.step)


def commit_checkpoint(
    store: ObjectStore, local_dir: Path, stage_key: str, step: int, round: int | None = None
) -> CheckpointRef:
    """Upload every file of ``local_dir``, then the manifest (with the checksums computed while
    uploading). Any earlier uncommitted upload at the same key is cleared first."""
    key = checkpoint_key(stage_key, step, round)
    # an earlier commit at this key loses its manifest first: a half-cleared one is never listed
    store.delete_prefix(join_key(key, MANIFEST_NAME))
    store.delete_prefix(key)
    store.abort_incomplete_uploads(key)
    local_dir = Path(local_dir)
    files = checkpoint_files(local_dir)
    moved = store.put_files((path, join_key(key, path.relative_to(local_dir).as_posix())) for path in files)
    manifest = Manifest(
        files=[
            ManifestFile(path=path.relative_to(local_dir).as_posix(), size=m.size, sha256=m.sha256)
            for path, m in zip(files, moved)
        ],
        step=step,
        round=round,
    )
    store.put_bytes(join_key(key, MANIFEST_NAME), manifest.to_json().encode())
    return CheckpointRef(key=key, uri=store.uri_for(key), step=step, round=round)


def list_checkpoints(store: ObjectStore, stage_key: str) -> list[CheckpointRef]:
    """Committed checkpoints of a stage (those with a manifest), oldest first."""
    refs = []
    for key in store.list_keys(stage_key):
        if not key.endswith("/" + MANIFEST_NAME):
            continue
        checkpoint_dir = key[: -len(MANIFEST_NAME) - 1]
        parsed = parse_checkpoint_key(checkpoint_dir[len(stage_key) :])
        if parsed is None:
            continue
        round_, step = parsed
        refs.append(CheckpointRef(key=checkpoint_dir, uri=store.uri_for(checkpoint_dir), step=step, round=round_))
    return sorted(refs, key=lambda ref: ref.order)


def latest_checkpoint(store: ObjectStore, stage_key: str) -> CheckpointRef | None:
    refs = list_checkpoints(store, stage_key)
    return refs[-1] if refs else None


def read_manifest(store: ObjectStore, key: str) -> Manifest:
    try:
        return Manifest.from_json(store.get_bytes(join_key(key, MANIFEST_NAME)))
    except ObjectNotFound:
        raise NotCommitted(f"{store.uri_for(key)} is not a committed checkpoint (no {MANIFEST_NAME})") from None


def fetch_checkpoint(store: ObjectStore, key: str, cache_dir: Path) -> Path:
    """A local directory holding the committed checkpoint at ``key``, every file verified against
    the manifest (size and sha256). A local store is verified in place, not copied."""
    manifest = read_manifest(store, key)
    in_place = store.local_path(key)
    if in_place is not None:
        from alignops.storage.manifest import sha256_file

        for entry in manifest.files:
            path = in_place / entry.path
            if not path.is_file():
                raise ChecksumMismatch(f"{store.uri_for(key)}: committed file {entry.path} is missing")
            size = path.stat().st_size
            if size != entry.size or sha256_file(path) != entry.sha256:
                raise ChecksumMismatch(f"{store.uri_for(key)}/{entry.path}: content differs from its manifest")
        return in_place
    target = Path(cache_dir) / key
    moved = store.get_files((join_key(key, entry.path), target / entry.path) for entry in manifest.files)
    for entry, got in zip(manifest.files, moved):
        if got.size != entry.size or got.sha256 != entry.sha256:
            raise ChecksumMismatch(
                f"{store.uri_for(key)}/{entry.path}: downloaded {got.size} bytes with sha256 {got.sha256[:12]}…, "
                f"manifest says {entry.size} bytes with {entry.sha256[:12]}…"
            )
    (target / MANIFEST_NAME).write_text(manifest.to_json())
    return target


def apply_retention(store: ObjectStore, stage_key: str, keep_last: int, protect: set[str] = frozenset()) -> list[str]:
    """Delete committed checkpoints older than the newest ``keep_last`` (the newest is always kept),
    and uncommitted leftovers older than the newest commit. Returns the deleted keys."""
    refs = list_checkpoints(store, stage_key)
    if not refs:
        return []
    keep = max(1, keep_last)
    doomed = [ref.key for ref in refs[:-keep] if ref.key not in protect]
    for key in doomed:
        # the manifest goes first so a half-deleted checkpoint is never seen as committed
        store.delete_prefix(join_key(key, MANIFEST_NAME))
        store.delete_prefix(key)
        store.abort_incomplete_uploads(key)
    committed = {ref.key for ref in refs}
    leftovers = [
        key
        for key, order in _checkpoint_dirs(store, stage_key).items()
        if order < refs[-1].order and key not in committed and key not in protect
    ]
    for key in leftovers:
        store.delete_prefix(key)
        store.abort_incomplete_uploads(key)
    return doomed + leftovers


def _checkpoint_dirs(store: ObjectStore, stage_key: str) -> dict[str, tuple[int, int]]:
    """Every checkpoint directory holding at least one object, committed or not, with its order."""
    dirs: dict[str, tuple[int, int]] = {}
    for key in store.list_keys(stage_key):
        parts = key[len(stage_key) :].strip("/").split("/")
        for depth in (1, 2):  # checkpoint-<step>/... or round-<n>/checkpoint-<step>/...
            parsed = parse_checkpoint_key("/".join(parts[:depth])) if len(parts) > depth else None
            if parsed is not None:
                round_, step = parsed
                dirs[join_key(stage_key, *parts[:depth])] = (round_ if round_ is not None else -1, step)
                break
    return dirs
