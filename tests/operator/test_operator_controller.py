"""The controller and executor against an in-memory API: the write protocol (status first with a
resourceVersion precondition, then children), expectations, and the per-job work queue."""

from __future__ import annotations

import asyncio
import copy

from operator_manifests import job_manifest

from alignops.metrics.operator import OperatorMetrics
from alignops.operator.controller import Controller
from alignops.operator.kube import ApiError


class FakeKube:
    """Objects by path; PATCH /status honours metadata.resourceVersion like the API server."""

    def __init__(self, aj: dict):
        self.aj = copy.deepcopy(aj)
        self.calls: list[tuple[str, str]] = []
        self.created: dict[str, dict] = {}
        self.conflicts = 0  # answer this many status writes with 409 (someone else wrote meanwhile)
        self.requests = 0

    def _path(self) -> str:
        meta = self.aj["metadata"]
        return f"/apis/alignops.io/v1alpha1/namespaces/{meta['namespace']}/alignmentjobs/{meta['name']}"

    async def get(self, path):
        self.calls.append(("GET", path))
        return copy.deepcopy(self.aj) if path == self._path() else None

    async def create(self, path, obj):
        self.calls.append(("POST", path))
        key = f"{path}/{obj['metadata']['name']}"
        if key in self.created:
            return None
        self.created[key] = copy.deepcopy(obj)
        return obj

    async def merge_patch(self, path, patch):
        self.calls.append(("PATCH", path))
        assert path == self._path() + "/status"
        if self.conflicts:
            self.conflicts -= 1
            self.aj["metadata"]["resourceVersion"] = str(int(self.aj["metadata"]["resourceVersion"]) + 1)
            raise ApiError(409, "Conflict", "the object has been modified")
        if patch["metadata"]["resourceVersion"] != self.aj["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", "the object has been modified")
        status = self.aj.setdefault("status", {})
        for key, value in patch["status"].items():
            if value is None:
                status.pop(key, None)
            else:
                status[key] = value
        self.aj["metadata"]["resourceVersion"] = str(int(self.aj["metadata"]["resourceVersion"]) + 1)
        return copy.deepcopy(self.aj)

    async def delete(self, path, propagation="Background", grace_seconds=None):
        self.calls.append(("DELETE", path))
        return True

    def close(self):
        pass


def _controller(settings, kube: FakeKube) -> Controller:
    controller = Controller(settings, api=kube, metrics=OperatorMetrics(), children=lambda key: ((), ()))
    return controller


def _posts(kube: FakeKube, kind: str) -> list[str]:
    return [path for method, path in kube.calls if method == "POST" and path.endswith(kind)]


def test_status_first_then_one_job_despite_a_lagging_watch(settings):
    async def main():
        kube = FakeKube(job_manifest())
        controller = _controller(settings, kube)
        controller.observe_body(copy.deepcopy(kube.aj))
        key = ("ml-team", "demo")
        await controller.reconcile_once(key)
        # the watch has shown neither the new status nor the Job: the next passes still create nothing
        await controller.reconcile_once(key)
        await controller.reconcile_once(key)
        await controller.stop()
        return kube

    kube = asyncio.run(main())
    methods = [m for m, _ in kube.calls if m != "POST" or not _.endswith("/events")]
    assert methods[:3] == ["PATCH", "POST", "POST"]  # status, then ConfigMap, then Job
    assert len(_posts(kube, "/jobs")) == 1 and len(_posts(kube, "/configmaps")) == 1
    job = next(v for k, v in kube.created.items() if "/jobs/" in k)
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-demo"
    assert kube.aj["status"]["stages"][0]["jobName"] == "demo-sft-a1"


def test_a_stale_object_is_reconciled_again_with_nothing_created_on_the_stale_pass(settings):
    async def main():
        kube = FakeKube(job_manifest())
        kube.conflicts = 1
        controller = _controller(settings, kube)
        controller.observe_body(copy.deepcopy(kube.aj))
        await controller.reconcile_once(("ml-team", "demo"))
        await controller.stop()
        return kube

    kube = asyncio.run(main())
    methods = [m for m, p in kube.calls if not p.endswith("/events")]
    # 409 on the stale pass: re-read, reconcile the fresh object, then create
    assert methods == ["PATCH", "GET", "PATCH", "POST", "POST"]
    assert len(kube.created) == 2


def test_requests_for_one_job_coalesce(settings):
    async def main():
        kube = FakeKube(job_manifest())
        controller = _controller(settings, kube)
        controller.observe_body(copy.deepcopy(kube.aj))
        passes = []
        original = controller.reconcile_once

        async def counting(key):
            passes.append(key)
            await asyncio.sleep(0.05)
            return await original(key)
        controller.reconcile_once = counting
        controller.request(("ml-team", "demo"))
        await asyncio.sleep(0.01)  # the first pass is running now
        for _ in range(9):
            controller.request(("ml-team", "demo"))
        await asyncio.sleep(0.5)
        await controller.stop()
        return passes

    passes = asyncio.run(main())
    # the first request runs; the nine that arrive while it runs make exactly one more pass
    assert len(passes) == 2
