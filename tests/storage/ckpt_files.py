"""Small helpers shared by the S3 storage tests."""

from __future__ import annotations

import random
from pathlib import Path

from alignops.storage.s3 import MiB, S3Store, S3Tuning
from alignops.storage.base import StorageOptions

# S3's (and moto's) minimum part size, so that a 12 MiB file already goes up in three parts
SMALL_PARTS = S3Tuning(
    multipart_threshold=5 * MiB,
    part_size=5 * MiB,
    download_part_size=5 * MiB,
    part_workers=3,
    file_workers=4,
    backoff_base=0.02,
)
BIG_FILE = "model.safetensors"


def write_checkpoint(directory: Path, seed: int, big_size: int = 12 * MiB) -> dict[str, bytes]:
    """A Hugging Face-like checkpoint: one file over the multipart threshold and a few small ones."""
    rng = random.Random(seed)
    files = {
        BIG_FILE: rng.randbytes(big_size),
        "config.json": f'{{"seed": {seed}}}'.encode(),
        "tokenizer/tokenizer.json": rng.randbytes(100_000),
        "generation_config.json": b"",
    }
    for name, data in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(data)
    return files


def store_for(bucket: str, endpoint: str | None = None, tuning: S3Tuning = SMALL_PARTS, prefix: str = "runs") -> S3Store:
    return S3Store(bucket, prefix, StorageOptions(endpoint=endpoint, path_style=True), tuning)
