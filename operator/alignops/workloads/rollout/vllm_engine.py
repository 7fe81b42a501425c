"""The ``vllm`` rollout engine (GPU rollout images only; ``vllm`` is imported when this engine is
made, never by the trainer image).

Written against vLLM's documented offline API and the way TRL drives a colocated engine
(``trl/generation/vllm_generation.py``); NOT run in this repository's CI or on its development
machines, where vLLM cannot be installed. What it relies on:

- ``LLM(model=DIR, gpu_memory_utilization=..., seed=..., logprobs_mode="processed_logprobs",
  distributed_executor_backend="external_launcher")``: the engine runs in this process (so its
  model can be reached for weight updates) and reports log-probs after temperature / top-p, as
  the transformers engine does;
- ``LLM.generate([{"prompt_token_ids": ids}, ...], SamplingParams(n, temperature, top_p, max_tokens,
  stop, include_stop_str_in_output=True, logprobs=0, seed))``: ``logprobs=0`` returns the sampled
  token's log-prob only; each ``RequestOutput.outputs[i]`` has ``token_ids``, ``text``,
  ``logprobs`` (one ``{token_id: Logprob}`` per token) and ``finish_reason``;
- weight updates in colocated placement: ``llm.llm_engine.model_executor.driver_worker
  .model_runner.model.load_weights(iterable of (name, tensor))`` (TRL's colocate path), else
  ``llm.collective_rpc(fn, args=(weights,))`` (a callable gets the worker as first argument), then
  ``llm.reset_prefix_cache()`` so no KV block computed with the old weights is reused.

The ``logprob_gap`` metric (rollout vs trainer log-probs of the sampled tokens) is the check that a
weight update took effect: a stale engine shows a gap that grows round after round.
"""

from __future__ import annotations

import os
from pathlib import Path

from alignops.workloads.context import ConfigError
from alignops.workloads.rollout.base import ENGINES, Completion, EngineInputs, SamplingSettings


def _load_into_worker(worker, weights) -> None:
    """Runs inside a vLLM worker (collective_rpc with a callable)."""
    worker.model_runner.model.load_weights(weights)


class VllmEngine:
    name = "vllm"

    def __init__(self, model_dir: Path, gpu_memory_utilization: float, seed: int, max_model_len: int | None = None):
        try:
            from vllm import LLM, SamplingParams
        except ImportError as exc:
            raise ConfigError(f"engine vllm needs the vllm package (the rollout image); this image has none ({exc}). "
                              "Use hyperparameters.engine: transformers, or run the stage on the rollout image.") from None
        self._sampling_params = SamplingParams
        # external_launcher keeps the engine in this process; it reads torch.distributed's variables
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                           ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29533")):
            os.environ.setdefault(key, value)
        self.llm = LLM(model=str(model_dir), gpu_memory_utilization=gpu_memory_utilization, seed=seed,
                       max_model_len=max_model_len, logprobs_mode="processed_logprobs",
                       distributed_executor_backend="external_launcher", enable_prefix_caching=True)
        self.prompts_per_call = 1 << 30  # one call per round: vLLM schedules the whole batch itself

    def generate(self, prompts: list[list[int]], sampling: SamplingSettings, seed: int) -> list[list[Completion]]:
        params = self._sampling_params(
            n=sampling.n,
            temperature=0.0 if sampling.greedy else sampling.temperature,
            top_p=1.0 if sampling.greedy else sampling.top_p,
            max_tokens=sampling.max_new_tokens,
            stop=list(sampling.stop) or None,
            include_stop_str_in_output=True,
            logprobs=0,
            seed=seed,
        )
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], sampling_params=params, use_tqdm=False)
        return [[self._completion(o) for o in request.outputs] for request in outputs]

    @staticmethod
    def _completion(output) -> Completion:
        ids = list(output.token_ids)
        logprobs = None
        if output.logprobs is not None:
            logprobs = [float(step[token].logprob) for step, token in zip(output.logprobs, ids)]
        return Completion(token_ids=ids, text=output.text, logprobs=logprobs,
                          finish_reason="length" if output.finish_reason == "length" else "stop")

    def update_weights(self, model) -> None:
        weights = [(name, param.detach()) for name, param in model.named_parameters()]
        runner_model = None
        try:
            runner_model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        except AttributeError:
            pass
        if runner_model is not None:
            runner_model.load_weights(weights)
        else:  # the engine runs in worker processes: send CPU copies
            self.llm.collective_rpc(_load_into_worker, args=([(n, t.cpu()) for n, t in weights],))
        self.llm.reset_prefix_cache()


@ENGINES.register("vllm")
def _vllm(inputs: EngineInputs) -> VllmEngine:
    hp = inputs.hyperparameters
    return VllmEngine(inputs.model_dir(), hp.gpu_memory_utilization, hp.seed, inputs.extra.get("max_model_len"))
