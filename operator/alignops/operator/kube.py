"""A small async face on the official ``kubernetes`` client: raw paths, dict bodies, one thread pool.

kopf watches and indexes; this client makes the operator's own writes (children, status, Events).
The blocking client runs in a bounded pool so a slow API server never stalls kopf's event loop.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping
from urllib.parse import quote

from alignops import GROUP, PLURAL, VERSION

Obj = dict[str, Any]
_GONE = object()  # delete's answer when there was nothing to delete


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str, body: Any = None):
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.body = body


def load_api_client(config_file: str | None = None, connections: int = 16):
    """An ApiClient for the cluster the operator runs in, else the kubeconfig's current context,
    with as many pooled connections as the operator has API threads."""
    import kubernetes

    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(config_file=config_file, client_configuration=configuration)
    configuration.connection_pool_maxsize = connections
    return kubernetes.client.ApiClient(configuration)


def aj_path(namespace: str, name: str | None = None, subresource: str | None = None) -> str:
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    if name:
        path += f"/{quote(name)}"
    if subresource:
        path += f"/{subresource}"
    return path


def core_path(namespace: str, plural: str, name: str | None = None) -> str:
    path = f"/api/v1/namespaces/{namespace}/{plural}"
    return f"{path}/{quote(name)}" if name else path


def batch_path(namespace: str, name: str | None = None) -> str:
    path = f"/apis/batch/v1/namespaces/{namespace}/jobs"
    return f"{path}/{quote(name)}" if name else path


class KubeApi:
    """``await api.request(method, path, body)`` -> the response object (a dict), or ApiError."""

    def __init__(self, api_client: Any = None, workers: int = 16):
        self._client = api_client if api_client is not None else load_api_client(connections=workers)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="alignops-api")
        self.requests = 0

    @property
    def client(self):
        return self._client

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._client is not None:
            self._client.close()

    def _call(self, method: str, path: str, body: Any, query: Mapping[str, Any] | None, content_type: str) -> Obj | None:
        from kubernetes.client.exceptions import ApiException

        self.requests += 1
        try:
            response = self.client.call_api(
                path, method, path_params={}, query_params=list((query or {}).items()),
                header_params={"Content-Type": content_type, "Accept": "application/json"},
                body=body, auth_settings=["BearerToken"], _preload_content=False, _return_http_data_only=True,
                _request_timeout=30,
            )
        except ApiException as exc:
            try:
                payload = json.loads(exc.body) if exc.body else {}
            except ValueError:
                payload = {}
            raise ApiError(exc.status or 0, payload.get("reason") or exc.reason or "", payload.get("message") or str(exc.body or ""), payload) from None
        data = response.data
        return json.loads(data) if data else None

    async def request(self, method: str, path: str, body: Any = None, query: Mapping[str, Any] | None = None,
                      content_type: str = "application/json") -> Obj | None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._call, method, path, body, query, content_type)

    async def _request_or(self, status: int, fallback: Any, method: str, path: str, body: Any = None) -> Any:
        """The response, or ``fallback`` when the server answers ``status``: an answer the caller
        expects (gone, already there), not an error."""
        try:
            return await self.request(method, path, body)
        except ApiError as exc:
            if exc.status == status:
                return fallback
            raise

    async def get(self, path: str) -> Obj | None:
        return await self._request_or(404, None, "GET", path)

    async def create(self, path: str, obj: Obj) -> Obj | None:
        """Create; None if it already exists (409): names are deterministic, so that is ours."""
        return await self._request_or(409, None, "POST", path, obj)

    async def merge_patch(self, path: str, patch: Obj) -> Obj | None:
        return await self.request("PATCH", path, patch, content_type="application/merge-patch+json")

    async def delete(self, path: str, propagation: str = "Background", grace_seconds: int | None = None) -> bool:
        """Delete; False if it was already gone."""
        body: Obj = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
        if grace_seconds is not None:
            body["gracePeriodSeconds"] = grace_seconds
        return await self._request_or(404, _GONE, "DELETE", path, body) is not _GONE
