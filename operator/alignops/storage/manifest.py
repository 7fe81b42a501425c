"""``manifest.json``: the commit marker of a checkpoint, and the list of its files with checksums."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

MANIFEST_NAME = "manifest.json"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ManifestFile:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    files: list[ManifestFile]
    step: int
    round: int | None = None
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())

    def to_json(self) -> str:
        return json.dumps(
            {
                "files": [asdict(f) for f in self.files],
                "step": self.step,
                "round": self.round,
                "createdAt": self.created_at,
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> "Manifest":
        data = json.loads(text)
        return cls(
            files=[ManifestFile(**f) for f in data["files"]],
            step=int(data["step"]),
            round=data.get("round"),
            created_at=data.get("createdAt", ""),
        )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_files(local_dir: Path) -> list[Path]:
    """Every regular file under ``local_dir`` except a stale manifest, in a stable order."""
    return sorted(
        p for p in local_dir.rglob("*") if p.is_file() and p.relative_to(local_dir).as_posix() != MANIFEST_NAME
    )


def build_manifest(local_dir: Path, step: int, round: int | None = None) -> Manifest:
    files = [
        ManifestFile(path=p.relative_to(local_dir).as_posix(), size=os.path.getsize(p), sha256=sha256_file(p))
        for p in checkpoint_files(local_dir)
    ]
    return Manifest(files=files, step=step, round=round)
