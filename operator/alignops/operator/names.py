"""Names and labels of an AlignmentJob's children (pure).

A stage run's Job (and its ConfigMap) is named ``<job>-<stage>-a<attempt>``; a round of a ``split``
``rl`` stage adds ``-r<round>-rollout`` or ``-r<round>-train``. Names are deterministic so that an
operator restarted at any moment finds what it created and a second create answers 409. A name
longer than 63 characters (the DNS-1123 label limit of Job names) is cut to 57 characters plus ``-``
and the first 5 hex digits of the SHA-256 of the full name, so distinct runs keep distinct names.

A run across nodes also has a headless Service of the same name, and its pods the hostnames
``<name>-<index>`` (the Job controller sets them for Indexed Jobs), which are DNS labels too: its
name keeps room for ``-<last index>`` (a 2-node run's name is at most 61 characters).
"""

from __future__ import annotations

import hashlib

MAX_NAME = 63

LABEL_JOB = "alignops.io/job"
LABEL_STAGE = "alignops.io/stage"
LABEL_ATTEMPT = "alignops.io/attempt"
LABEL_ROUND = "alignops.io/round"
LABEL_ROLE = "alignops.io/role"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
RETRY_ANNOTATION = "alignops.io/retry"
CONFIG_HASH_ANNOTATION = "alignops.io/config-sha256"

COMMON_LABELS = {
    "app.kubernetes.io/name": "alignops",
    "app.kubernetes.io/component": "stage",
    "app.kubernetes.io/managed-by": "alignops-operator",
}


def fit_name(name: str, limit: int = MAX_NAME) -> str:
    """``name`` if it fits ``limit`` characters, else its first ``limit - 6`` characters + ``-`` +
    5 hex digits of its SHA-256 (57 + 1 + 5 = 63)."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:5]
    return f"{name[:limit - 1 - len(digest)]}-{digest}"


def child_name(job: str, stage: str, attempt: int, round_: int | None = None, role: str = "all", nodes: int = 1) -> str:
    """The Job/ConfigMap (and, across nodes, Service) name of one stage run."""
    name = f"{job}-{stage}-a{attempt}"
    if round_ is not None:
        name += f"-r{round_}-{role}"
    return fit_name(name, MAX_NAME - len(f"-{nodes - 1}") if nodes > 1 else MAX_NAME)


def pod_hostname(name: str, index: int) -> str:
    """The hostname the Job controller gives index ``index`` of the Indexed Job ``name``."""
    return f"{name}-{index}"


def run_labels(job: str, stage: str, attempt: int, round_: int | None = None, role: str = "all") -> dict[str, str]:
    """Labels of a stage run's Job, pod and ConfigMap; the operator finds its children by them."""
    labels = {**COMMON_LABELS, LABEL_JOB: job, LABEL_STAGE: stage, LABEL_ATTEMPT: str(attempt)}
    if round_ is not None:
        labels[LABEL_ROUND] = str(round_)
    if role != "all":
        labels[LABEL_ROLE] = role
    return labels
