"""kopf handlers: watch AlignmentJobs and the Jobs and Pods they own, and hand every change to the
controller's work queue (``alignops.operator.controller``), which runs the one ``reconcile()``.

The pattern of kopf's reconciliation guide: the *actual state* (children) lives in in-memory kopf
indexes fed by watch streams (no API listing per reconcile), and a low-level event handler for both
the desired state (the AlignmentJob) and the actual state (its children) reacts to every change.
kopf's per-object change handlers (``on.create/update/resume``) are not used: reconcile is
level-based, so the first listing after a start (``resume``), a new object (``create``) and a
changed one (``update``) are the same event to it, and kopf then needs to write no bookkeeping
annotations on the objects. Children are found by the label ``alignops.io/job``.

``kopf run -m alignops.operator.handlers`` registers these handlers on kopf's default registry;
``make_registry()`` builds a fresh registry (``alignops operator`` and the tests use it).
"""

from __future__ import annotations

import logging

import kopf

from alignops import GROUP, PLURAL, VERSION
from alignops.metrics.operator import OperatorMetrics
from alignops.operator.controller import Controller
from alignops.operator.kube import KubeApi
from alignops.operator.names import LABEL_JOB
from alignops.operator.observe import JobView, PodView
from alignops.operator.settings import OperatorSettings

OWNED = {LABEL_JOB: kopf.PRESENT}


def register(registry: kopf.OperatorRegistry) -> kopf.OperatorRegistry:
    """Add the operator's handlers to ``registry``. Settings come from ``memo.alignops_settings``
    (else from the environment), metrics from ``memo.alignops_metrics`` (else a new registry)."""

    @kopf.on.login(id="login", registry=registry)
    def login(**kwargs):
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(id="startup", registry=registry)
    async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_):
        ops: OperatorSettings = memo.get("alignops_settings") or OperatorSettings()
        memo.alignops_settings = ops
        # kopf's own per-handler messages stay in the log; the operator posts its own Events
        settings.posting.level = logging.WARNING
        # no runtime scanning of CRDs and namespaces: the chart's RBAC grants neither (least privilege);
        # the AlignmentJob CRD is installed before the operator starts
        settings.scanning.disabled = True
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        metrics = memo.get("alignops_metrics") or OperatorMetrics()
        memo.alignops_controller = Controller(ops, KubeApi(workers=ops.api_workers), metrics)
        memo.alignops_controller.start()
        logging.getLogger("alignops.operator").info(
            "alignops operator started: namespaces=%s trainer=%s default storage=%s",
            ",".join(ops.namespace_list) or "all", ops.trainer_image, ops.default_storage_uri)

    @kopf.on.cleanup(id="cleanup", registry=registry)
    async def cleanup(memo: kopf.Memo, **_):
        controller: Controller | None = memo.get("alignops_controller")
        if controller is not None:
            await controller.stop()
            controller.api.close()

    @kopf.on.probe(id="reconciles", registry=registry)
    def probe_reconciles(memo: kopf.Memo, **_):
        controller: Controller | None = memo.get("alignops_controller")
        return controller.reconciles if controller is not None else 0

    @kopf.index("batch", "v1", "jobs", id="alignops_jobs", labels=OWNED, registry=registry)
    async def alignops_jobs(body, namespace, labels, **_):
        return {(namespace, labels[LABEL_JOB]): JobView.from_body(body)}

    @kopf.index("", "v1", "pods", id="alignops_pods", labels=OWNED, registry=registry)
    async def alignops_pods(body, namespace, labels, **_):
        return {(namespace, labels[LABEL_JOB]): PodView.from_body(body)}

    def _controller(memo: kopf.Memo, alignops_jobs, alignops_pods) -> Controller:
        controller: Controller = memo.alignops_controller
        controller.bind_indexes(alignops_jobs, alignops_pods)
        return controller

    @kopf.on.event(GROUP, VERSION, PLURAL, id="alignmentjob", registry=registry)
    async def alignmentjob_changed(event, body, namespace, name, memo, alignops_jobs, alignops_pods, **_):
        controller = _controller(memo, alignops_jobs, alignops_pods)
        if event.get("type") == "DELETED":
            controller.forget((namespace, name))
            return
        controller.observe_body(_plain(body))
        controller.request((namespace, name))

    @kopf.on.event("batch", "v1", "jobs", id="child_job", labels=OWNED, registry=registry)
    async def child_job_changed(namespace, labels, memo, alignops_jobs, alignops_pods, **_):
        _controller(memo, alignops_jobs, alignops_pods).request((namespace, labels[LABEL_JOB]))

    @kopf.on.event("", "v1", "pods", id="child_pod", labels=OWNED, registry=registry)
    async def child_pod_changed(namespace, labels, memo, alignops_jobs, alignops_pods, **_):
        _controller(memo, alignops_jobs, alignops_pods).request((namespace, labels[LABEL_JOB]))

    return registry


def _plain(body) -> dict:
    """A detached plain-dict copy of a kopf body."""
    import copy

    return copy.deepcopy(dict(body))


def make_registry() -> kopf.OperatorRegistry:
    return register(kopf.OperatorRegistry())


if __name__ != "__main__":  # `kopf run -m alignops.operator.handlers`
    register(kopf.get_default_registry())
