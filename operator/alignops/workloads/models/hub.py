"""Models from the Hugging Face Hub, through ``huggingface_hub``'s own cache (``HF_HOME``; the chart
can mount a volume there) and its own settings: ``HF_TOKEN`` (from the Secret named by
``spec.model.tokenSecret``; huggingface_hub reads it, AlignOps never does) and ``HF_HUB_OFFLINE=1``
(only the cache is read: how CI runs). Only the files a model needs are fetched (config, safetensors,
tokenizer; ``*.py`` only where remote code is trusted).
"""

from __future__ import annotations

import os
from pathlib import Path

from alignops.workloads.models.hf_dir import CODE_PATTERNS, MODEL_FILE_PATTERNS, SKIPPED_PATTERNS, ModelDirError


class HubUnavailable(RuntimeError):
    """The Hub could not be reached or answered with a server error: worth a retry."""


def hub_snapshot(repo: str, revision: str, trust_remote_code: bool) -> Path:
    """The local snapshot directory of ``repo`` at ``revision`` (downloaded into the cache if needed)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    patterns = list(MODEL_FILE_PATTERNS + (CODE_PATTERNS if trust_remote_code else ()))
    where = f"hub model {repo}@{revision}"
    try:
        return Path(snapshot_download(repo_id=repo, revision=revision, allow_patterns=patterns,
                                      ignore_patterns=list(SKIPPED_PATTERNS)))
    except GatedRepoError:
        raise ModelDirError(f"{where} is gated: accept its terms on huggingface.co with an account whose token is in the "
                            "Secret named by spec.model.tokenSecret") from None
    except RepositoryNotFoundError:
        raise ModelDirError(f"{where}: no such repository, or it is private (then name a Secret with a token in "
                            "spec.model.tokenSecret)") from None
    except RevisionNotFoundError:
        raise ModelDirError(f"{where}: no such revision (branch, tag or commit); check model.revision") from None
    except LocalEntryNotFoundError:
        if offline():
            raise ModelDirError(f"{where} is not in the Hub cache ({cache_dir()}) and HF_HUB_OFFLINE=1 forbids a download: "
                                "populate the cache (huggingface-cli download) or unset HF_HUB_OFFLINE") from None
        raise HubUnavailable(f"{where}: the Hub could not be reached") from None
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status is not None and 400 <= status < 500 and status not in (408, 429):
            raise ModelDirError(f"{where}: the Hub refused the download (HTTP {status})") from None
        raise HubUnavailable(f"{where}: the Hub failed (HTTP {status})") from None


def offline() -> bool:
    from huggingface_hub import is_offline_mode

    return bool(is_offline_mode())


def cache_dir() -> str:
    return os.environ.get("HF_HUB_CACHE") or os.path.join(os.environ.get("HF_HOME", "~/.cache/huggingface"), "hub")
