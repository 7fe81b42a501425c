"""Fixtures of the Kubernetes test harness (see tests/k8s/__init__.py for the guide)."""
from .fixtures import *  # noqa: F401,F403  (k8s_api, k8s_namespace, kubectl, kubectl_ok, ...)
