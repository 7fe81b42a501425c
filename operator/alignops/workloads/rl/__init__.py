"""The ``rl`` stage as a package: ``stage`` (rounds; the colocated and split placements), ``prompts``,
``sampling``, ``rewards``, ``store``, ``batch``, ``update``, ``trainer``, ``critic``. The stage's
docstring (``alignops.workloads.rl.stage``) lists every metric it logs and its Prometheus name."""
