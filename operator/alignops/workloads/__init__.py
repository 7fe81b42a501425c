"""What runs in the pods (and in `alignops run`'s subprocesses): ``python -m alignops.workloads CONFIG.json``.

``entrypoint`` runs one stage run under the run contract (``alignops.contract``); ``context`` is what
a run has at hand; ``stages`` maps stage types to their modules (``rl`` is a package of its own);
``training`` holds the loop, its state and the engine seam; ``data``, ``models``, ``evaluation`` and
``rollout`` what the stages share. docs/architecture.md draws the whole house.

Imports torch and transformers; vLLM and DeepSpeed only lazily, where a stage asks for them.
"""
