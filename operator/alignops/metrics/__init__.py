"""Prometheus metrics: the name table (``names``), a stage pod's exporter (``workload``) and the
operator's registry (``operator``). Nothing here imports torch at import time."""
