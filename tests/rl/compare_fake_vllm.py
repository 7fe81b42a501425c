"""Compare tests/rl/fake_vllm.py with a real vLLM's Python classes (run by hand when the pin moves).

vLLM's Python modules import on a CPU with the CPU torch; only its kernels need CUDA. Unpack the
pinned wheel's Python files and put them (plus the pure-Python packages they import) on the path:

    pip download --no-deps --python-version 3.12 --only-binary :all: -d /tmp/w vllm==0.33.0
    unzip -q /tmp/w/vllm-*.whl -x '*.so' -d /tmp/vllm-src
    PYTHONPATH=/tmp/vllm-src:operator:tests/rl python tests/rl/compare_fake_vllm.py

It checks the fake's LLM signature, EngineArgs names and SamplingParams fields against the real
ones, and that the real EngineArgs and SamplingParams accept what the engine passes. Exits 1 on a
difference.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import fake_vllm


def main() -> int:
    import dataclasses

    from vllm.engine.arg_utils import EngineArgs
    from vllm.entrypoints.llm import LLM
    from vllm.sampling_params import SamplingParams

    from alignops.workloads.rollout.base import SamplingSettings
    from alignops.workloads.rollout.vllm_engine import VllmSettings, llm_kwargs, sampling_kwargs

    problems = []
    real, fake = inspect.signature(LLM.__init__).parameters, inspect.signature(fake_vllm.LLM.__init__).parameters
    if [(n, p.kind, p.default) for n, p in real.items()] != [(n, p.kind, p.default) for n, p in fake.items()]:
        problems.append(f"LLM.__init__: {list(real)} != {list(fake)}")
    for method in ("generate", "collective_rpc", "reset_prefix_cache", "sleep", "wake_up"):
        real_m, fake_m = inspect.signature(getattr(LLM, method)), inspect.signature(getattr(fake_vllm.LLM, method))
        if [(n, p.kind, p.default) for n, p in real_m.parameters.items()] != [(n, p.kind, p.default) for n, p in fake_m.parameters.items()]:
            problems.append(f"LLM.{method}: {real_m} != {fake_m}")
    engine_args = {f.name for f in dataclasses.fields(EngineArgs)}
    if engine_args != fake_vllm.ENGINE_ARGS:
        problems.append(f"EngineArgs: real only {sorted(engine_args - fake_vllm.ENGINE_ARGS)}, fake only {sorted(fake_vllm.ENGINE_ARGS - engine_args)}")
    real_fields = [f for f in SamplingParams.__struct_fields__ if not f.startswith("_")]
    fake_fields = [f.name for f in dataclasses.fields(fake_vllm.SamplingParams)]
    if real_fields != fake_fields:
        problems.append(f"SamplingParams fields: {real_fields} != {fake_fields}")
    EngineArgs(**llm_kwargs(VllmSettings(Path("/nonexistent"), 0.3, 2**63 - 1, 128, "bfloat16", colocated=True)))
    SamplingParams(**sampling_kwargs(SamplingSettings(n=4, temperature=0.7, top_p=0.9, stop=("\n",)), 2**63 - 1))
    SamplingParams(**sampling_kwargs(SamplingSettings(greedy=True), 0))
    for problem in problems:
        print(problem)
    print("fake_vllm matches" if not problems else f"{len(problems)} differences")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
