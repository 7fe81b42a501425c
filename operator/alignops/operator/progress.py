"""Stall detection input: a running stage pod's ``/progress`` on its metrics port.

The stage exporter (``alignops.metrics.workload``) serves ``{"step", "totalSteps", "round",
"records", "startTime", "lastProgressTime", "now"}`` (Unix seconds). Staleness is ``now -
lastProgressTime`` as the pod measures it, so the operator and the node need no clock sync.
``lastProgressTime`` starts at the process start: ``progressDeadlineSeconds`` must cover loading the
model and data. A pod that does not answer is never declared stalled (a network policy or a slow
start must not kill a healthy run); it is polled again at the next interval.

Why polling and not a liveness probe: a failing probe restarts or kills the container with no reason
the operator can tell from a crash, while polling lets the operator record ``Stalled`` with the last
step, stop the run gracefully (SIGTERM: it may still commit a checkpoint) and retry it by the
planner's rule.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp

from alignops.operator.reconcile import Progress

TIMEOUT_SECONDS = 3.0


def parse_progress(document: dict) -> Progress | None:
    try:
        stale = float(document["now"]) - float(document["lastProgressTime"])
    except (KeyError, TypeError, ValueError):
        return None
    step = document.get("step")
    return Progress(step=int(step) if isinstance(step, (int, float)) else None, stale_seconds=max(0.0, stale))


async def fetch_progress(session: aiohttp.ClientSession, host: str, port: int) -> Progress | None:
    """The pod's progress, or None if it does not answer properly."""
    try:
        async with session.get(f"http://{host}:{port}/progress", timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)) as resp:
            if resp.status != 200:
                return None
            return parse_progress(json.loads(await resp.text()))
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError):
        return None
