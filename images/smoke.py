"""Smoke test of a built image, run inside it (no GPU needed) by .github/workflows/images.yml:

    docker run --rm -i --entrypoint python IMAGE - KIND TORCH_VERSION VLLM_VERSION < images/smoke.py

KIND is operator, trainer or rollout. Checks the packages each image must (and must not) hold,
torch's version and CUDA build against the matrix, and in the rollout image that the installed
vLLM's own EngineArgs, SamplingParams and LLM methods accept every argument alignops passes them.
"""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import importlib.util
import inspect
import sys
from pathlib import Path

GPU_PACKAGES = ("torch", "transformers", "accelerate", "deepspeed", "datasets", "peft", "huggingface-hub", "liger-kernel",
                "safetensors")


def has(distribution: str) -> bool:
    try:
        metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def check_torch(torch_version: str) -> None:
    import torch

    assert torch.__version__.split("+")[0] == torch_version, f"torch {torch.__version__}, the matrix says {torch_version}"
    assert (torch.version.cuda or "").startswith("13."), f"torch's CUDA is {torch.version.cuda}, the matrix says 13.x"


def check_vllm_signatures(torch_version: str, vllm_version: str) -> None:
    import vllm
    from vllm.engine.arg_utils import EngineArgs

    from alignops.workloads.rollout.base import SamplingSettings
    from alignops.workloads.rollout.vllm_engine import VllmSettings, llm_kwargs, sampling_kwargs

    assert vllm.__version__ == vllm_version, f"vllm {vllm.__version__}, the matrix says {vllm_version}"
    assert f"torch=={torch_version}" in " ".join(metadata.requires("vllm")), "vLLM pins another torch"
    # LLM hands what its signature does not name to the EngineArgs dataclass: both must know them
    EngineArgs(**llm_kwargs(VllmSettings(Path("/nonexistent"), 0.3, 1, 128, "bfloat16", colocated=True)))
    vllm.SamplingParams(**sampling_kwargs(SamplingSettings(n=4, temperature=0.7, top_p=0.9, stop=("\n",)), 2**62 - 1))
    vllm.SamplingParams(**sampling_kwargs(SamplingSettings(greedy=True), 0))
    inspect.signature(vllm.LLM.generate).bind(None, [{"prompt_token_ids": [1]}], sampling_params=[], use_tqdm=False)
    inspect.signature(vllm.LLM.sleep).bind(None, level=1)
    inspect.signature(vllm.LLM.wake_up).bind(None, tags=["weights"])
    inspect.signature(vllm.LLM.collective_rpc).bind(None, "reload_weights", kwargs={})
    inspect.signature(vllm.LLM.reset_prefix_cache).bind(None)
    # the worker's reload path, read from its source (importing it wants a GPU)
    source = Path(importlib.util.find_spec("vllm.v1.worker.gpu_model_runner").origin).read_text()
    reload = [node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.FunctionDef) and node.name == "reload_weights"]
    assert reload and {"weights_iterator", "is_checkpoint_format"} <= {a.arg for a in reload[0].args.args}, "reload_weights"


def main(kind: str, torch_version: str, vllm_version: str) -> None:
    if kind == "operator":
        import alignops.operator  # noqa: F401

        assert importlib.util.find_spec("torch") is None, "torch in the operator image"
    else:
        import alignops.workloads.entrypoint  # noqa: F401

        missing = [name for name in GPU_PACKAGES if not has(name)]
        assert not missing, f"missing: {missing}"
        check_torch(torch_version)
        assert has("vllm") == (kind == "rollout"), f"vllm in the {kind} image: {has('vllm')}"
        if kind == "rollout":
            check_vllm_signatures(torch_version, vllm_version)
    print(f"{kind}: ok")


if __name__ == "__main__":
    main(*sys.argv[1:4])
