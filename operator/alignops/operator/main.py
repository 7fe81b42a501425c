"""``alignops operator``: kopf in asyncio with the operator's registry, settings, ``/metrics`` and a
liveness/readiness endpoint (kopf's ``/healthz``: it answers once the operator is up and its watch
streams run; the probe result includes the number of reconciles done)."""

from __future__ import annotations

import asyncio
import logging

import kopf

from alignops.metrics.operator import OperatorMetrics
from alignops.operator.handlers import make_registry
from alignops.operator.settings import OperatorSettings


def run_operator(settings: OperatorSettings) -> None:
    logging.basicConfig(level=logging.DEBUG if settings.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not settings.verbose:
        logging.getLogger("kopf").setLevel(logging.WARNING)
        logging.getLogger("kubernetes").setLevel(logging.WARNING)
    metrics = OperatorMetrics()
    if settings.metrics_port:
        metrics.serve(settings.metrics_port)
    namespaces = settings.namespace_list
    liveness = f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None
    memo = kopf.Memo(alignops_settings=settings, alignops_metrics=metrics)
    asyncio.run(kopf.operator(
        registry=make_registry(),
        memo=memo,
        standalone=settings.standalone,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness,
    ))
