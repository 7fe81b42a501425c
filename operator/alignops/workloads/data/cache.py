"""Tokenised training data kept between attempts of a stage.

A retry on a cluster is a new pod whose scratch volume starts empty, and ``alignops run`` gives each
attempt a fresh scratch directory too, so the cache lives where checkpoints live: in the job's
storage, at ``<stage_key>/data/<view>-<fingerprint>/checkpoint-0/``, committed by the checkpoint
protocol (files first, ``manifest.json`` last; verified when read back; never listed as a
checkpoint nor touched by checkpoint retention). The fingerprint covers what the tokens depend on:
the data's identity (a local file's size and modification time, a downloaded object's sha256, a Hub
snapshot's commit), the source's settings, the view, maxLength, the held-out split and the
tokenizer (vocabulary, special tokens, chat template). Only the first process of a distributed
stage writes it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from alignops.storage import commit_checkpoint, fetch_checkpoint
from alignops.storage.base import join_key
from alignops.storage.checkpoints import ChecksumMismatch, NotCommitted
from alignops.storage.layout import checkpoint_key
from alignops.workloads.context import RunContext

LAYOUT_VERSION = 1  # bump when the tokenisation changes, so older caches are not read


def tokenizer_fingerprint(tokenizer) -> str:
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    special = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, getattr(tokenizer, "chat_template", None))
    digest.update(json.dumps(special, default=str).encode())
    return digest.hexdigest()


def fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps([LAYOUT_VERSION, *parts], default=str, sort_keys=True).encode()).hexdigest()[:20]


class DataCache:
    """One view's tokenised data of one stage, by fingerprint."""

    def __init__(self, ctx: RunContext, view: str, key: str):
        self.ctx = ctx
        self.key = checkpoint_key(join_key(ctx.config.stage_key, "data", f"{view}-{key}"), 0)

    @property
    def uri(self) -> str:
        return self.ctx.store.uri_for(self.key)

    def load(self) -> Path | None:
        """A verified local copy of the cache, or None when there is none (or it is damaged)."""
        try:
            return fetch_checkpoint(self.ctx.store, self.key, self.ctx.scratch / "data-cache")
        except (NotCommitted, ChecksumMismatch):
            return None

    def save(self, directory: Path) -> None:
        if int(os.environ.get("RANK", "0")) != 0:
            return
        commit_checkpoint(self.ctx.store, directory, self.key.rsplit("/", 1)[0], 0)
