"""The ``vllm`` rollout engine (the rollout image only; ``vllm`` is imported when this engine is made).

Written against vLLM 0.33.0's source (wheel ``vllm-0.33.0``, commit 4ba787ec9) and TRL's colocate
mode (``trl/generation/vllm_generation.py``); NOT run in this repository's CI or on its development
machines, where vLLM cannot be installed. ``tests/rl/fake_vllm.py`` copies the signatures used here,
with file and line. What it relies on:

- ``LLM(model=DIR, dtype, seed, gpu_memory_utilization, max_model_len, logprobs_mode=
  "processed_logprobs", distributed_executor_backend="external_launcher", enable_prefix_caching,
  enable_sleep_mode)``: the keywords after ``seed`` go through ``**kwargs`` to ``EngineArgs``, which
  raises TypeError on a name it lacks. ``external_launcher`` keeps the engine core and its one worker
  in this process (``config/parallel.py`` sets ``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so
  ``collective_rpc`` calls the worker directly with our tensors. ``max_model_len`` is the stage's
  prompt + response budget, not the model's context: vLLM refuses to start when one full-length
  sequence does not fit its KV-cache share.
- ``LLM.generate([{"prompt_token_ids": ids}, ...], sampling_params=[SamplingParams(...), ...])``:
  one ``SamplingParams`` per prompt, each with its own seed. vLLM gives the j-th of a request's
  ``n`` samples the seed ``seed + j`` (``v1/engine/parallel_sampling.py``): one seed for the whole
  batch would give the j-th sample of every prompt the same noise, so equal prompts would get equal
  completions. ``logprobs=0`` returns the sampled token's log-prob after temperature and top-p
  (``processed_logprobs``), the quantity the transformers engine reports.
- Colocated placement (the engine shares the GPU with the trainer): ``sleep(level=1)`` before the
  policy update (weights offloaded to host memory, KV cache dropped), then ``wake_up(["weights"])``,
  ``collective_rpc("reload_weights", kwargs={"weights_iterator": ..., "is_checkpoint_format":
  True})``: vLLM's reload path (``model_loader/reload/inplace.py``), which loads checkpoint-format
  tensors layer by layer and re-runs each layer's post-load processing (quantised and fused
  layers included; a bare ``model.load_weights`` skips it), then ``wake_up(["kv_cache"])`` and
  ``reset_prefix_cache()``. The trainer's tensors are renamed to checkpoint names first
  (``alignops.workloads.rollout.weights``), and the names are checked once against the checkpoint
  the engine started from.

The ``logprob_gap`` metric (engine vs trainer log-probs of the sampled tokens) is the alarm that a
sync took effect: an engine left on stale weights shows a gap that grows round after round.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from alignops.workloads.context import ConfigError
from alignops.workloads.rollout.base import ENGINES, Completion, EngineInputs, EngineTraits, SamplingSettings
from alignops.workloads.rollout.weights import check_names, checkpoint_weights

# level 1 keeps a host copy of the weights, so an engine whose sync failed still holds coherent ones;
# level 2 would save that host memory but leaves the weights undefined until the reload
SLEEP_LEVEL = 1
# vLLM keeps request seeds in int64 (v1/worker/gpu/sample/states.py) and adds the sample index
SEED_RANGE = 2**62


@dataclass(frozen=True)
class VllmSettings:
    """What the engine is started with (``llm_kwargs`` turns it into ``LLM``'s keywords)."""

    model_dir: Path
    gpu_memory_utilization: float
    seed: int
    max_model_len: int
    dtype: str  # "bfloat16" or "float32": the trainer's precision
    colocated: bool  # shares the GPU with the trainer: sleep mode on


def llm_kwargs(settings: VllmSettings) -> dict:
    return dict(
        model=str(settings.model_dir),
        dtype=settings.dtype,
        seed=settings.seed % SEED_RANGE,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        max_model_len=settings.max_model_len,
        logprobs_mode="processed_logprobs",
        distributed_executor_backend="external_launcher",
        enable_prefix_caching=True,  # the n samples of a prompt share its KV blocks
        enable_sleep_mode=settings.colocated,
    )


def sampling_kwargs(sampling: SamplingSettings, seed: int) -> dict:
    """``SamplingParams``' keywords for one prompt (``logprobs=0``: the sampled token's only)."""
    return dict(
        n=sampling.n,
        temperature=0.0 if sampling.greedy else sampling.temperature,
        top_p=1.0 if sampling.greedy else sampling.top_p,
        max_tokens=sampling.max_new_tokens,
        stop=list(sampling.stop) or None,
        include_stop_str_in_output=True,
        logprobs=0,
        seed=seed % SEED_RANGE,
    )


class VllmEngine:
    name = "vllm"

    def __init__(self, settings: VllmSettings):
        try:
            from vllm import LLM, SamplingParams
        except ImportError as exc:
            raise ConfigError(f"engine vllm needs the vllm package (the rollout image); this image has none ({exc}). "
                              "Use hyperparameters.engine: transformers, or run the stage on the rollout image.") from None
        self.settings = settings
        self._sampling_params = SamplingParams
        # external_launcher reads torch.distributed's variables (one process, rank 0, unless a launcher set them)
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                           ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29533")):
            os.environ.setdefault(key, value)
        self.llm = LLM(**llm_kwargs(settings))
        self.asleep = False
        self._names_checked = False
        self.prompts_per_call = 1 << 30  # one call per round: vLLM schedules the whole batch itself

    def generate(self, prompts: list[list[int]], sampling: SamplingSettings, seeds: list[int]) -> list[list[Completion]]:
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        params = [self._sampling_params(**sampling_kwargs(sampling, seed)) for seed in seeds]
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], sampling_params=params, use_tqdm=False)
        groups = [[self._completion(o) for o in request.outputs] for request in outputs]
        if len(groups) != len(prompts) or any(len(g) != sampling.n for g in groups):
            raise RuntimeError(f"vllm returned {[len(g) for g in groups]} completions for {len(prompts)} prompts x {sampling.n}")
        return groups

    @staticmethod
    def _completion(output) -> Completion:
        ids = list(output.token_ids)
        logprobs = None
        if output.logprobs is not None:
            logprobs = [float(step[token].logprob) for step, token in zip(output.logprobs, ids)]
        return Completion(token_ids=ids, text=output.text, logprobs=logprobs,
                          finish_reason="length" if output.finish_reason == "length" else "stop")

    def sleep(self) -> None:
        if self.settings.colocated and not self.asleep:
            self.llm.sleep(level=SLEEP_LEVEL)
            self.asleep = True

    def update_weights(self, model) -> None:
        if not self._names_checked:  # a pass over names only: the tensors are views
            check_names((name for name, _ in checkpoint_weights(model)), self.settings.model_dir)
            self._names_checked = True
        if self.asleep:  # the weights' memory must be mapped before anything is written into it
            self.llm.wake_up(tags=["weights"])
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": checkpoint_weights(model),
                                                          "is_checkpoint_format": True})
        if self.asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False
        self.llm.reset_prefix_cache()  # no KV block computed with the old weights is reused


def settings_from(inputs: EngineInputs) -> VllmSettings:
    hp, extra = inputs.hyperparameters, inputs.extra
    return VllmSettings(model_dir=Path(inputs.model_dir()), gpu_memory_utilization=hp.gpu_memory_utilization, seed=hp.seed,
                        max_model_len=extra["max_model_len"], dtype=extra["dtype"], colocated=extra["colocated"])


@ENGINES.register("vllm", traits=EngineTraits(loads_from_disk=True))
def _vllm(inputs: EngineInputs) -> VllmEngine:
    return VllmEngine(settings_from(inputs))
