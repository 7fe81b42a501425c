"""What runs in the pods (and in `alignops run`'s subprocesses): ``python -m alignops.workloads CONFIG.json``.

Imports torch and transformers; vLLM and DeepSpeed only lazily, where a stage asks for them.
"""
