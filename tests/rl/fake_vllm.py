"""A stand-in for the ``vllm`` package with vLLM 0.33.0's own signatures, strict where vLLM is.

vLLM cannot be installed here (its wheel pins a CUDA torch), so the rollout engine is tested against
this module. Every signature below is copied from the vllm-0.33.0 wheel (commit 4ba787ec9); the
comment on each gives the file and line inside the wheel. Unknown keywords raise TypeError as the
real ones do (``LLM`` hands its ``**kwargs`` to the ``EngineArgs`` dataclass; ``SamplingParams`` is a
msgspec Struct), and the checks vLLM makes on the arguments the engine passes are repeated. The
sampler is a toy, but follows vLLM's seeding rule: the j-th of a request's n samples is drawn with
the seed + j (vllm/v1/engine/parallel_sampling.py:81), and equal seeds give equal draws.

The "engine" holds the tensors of the checkpoint it was started from (read with safetensors), and
``collective_rpc("reload_weights", ...)`` overwrites them by checkpoint name, refusing a name the
checkpoint lacks (vLLM's ``load_weights`` raises KeyError on one) or a shape that differs.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch

# vllm/engine/arg_utils.py:489 ``class EngineArgs``: its dataclass fields, the keywords LLM(**kwargs) accepts
ENGINE_ARGS = frozenset("""
model enable_return_routed_experts return_sampling_mask model_weights served_model_name tokenizer
hf_config_path runner convert skip_tokenizer_init enable_prompt_embeds tokenizer_mode trust_remote_code
allowed_local_media_path allowed_media_domains download_dir safetensors_load_strategy
safetensors_prefetch_num_threads safetensors_prefetch_block_size load_format config_format dtype
kv_cache_dtype seed max_model_len cudagraph_capture_sizes max_cudagraph_capture_size ir_op_priority
distributed_executor_backend pipeline_parallel_size master_addr master_port nnodes node_rank
distributed_timeout_seconds cpu_distributed_timeout_seconds numa_bind numa_bind_nodes numa_bind_cpus
device_ids tensor_parallel_size prefill_context_parallel_size decode_context_parallel_size dcp_comm_backend
dcp_q_replicate dcp_kv_cache_interleave_size cp_kv_cache_interleave_size data_parallel_size
data_parallel_rank data_parallel_start_rank data_parallel_size_local data_parallel_address
data_parallel_rpc_port data_parallel_hybrid_lb data_parallel_external_lb
data_parallel_multi_port_external_lb data_parallel_backend enable_hc_sp enable_expert_parallel
enable_batch_sharded_sampling enable_ep_weight_filter moe_backend linear_backend sparse_indexer_topk_backend
all2all_backend enable_elastic_ep elastic_ep_max_dp_size enable_dbo ubatch_size dbo_decode_token_threshold
dp_sync_interval dbo_prefill_token_threshold disable_nccl_for_dp_synchronization eplb_config enable_eplb
expert_placement_strategy _api_process_count _api_process_rank max_parallel_loading_workers block_size
enable_prefix_caching prefix_caching_hash_algo prefix_cache_retention_interval disable_sliding_window
disable_cascade_attn offload_backend cpu_offload_gb cpu_offload_params offload_group_size
offload_num_in_group offload_prefetch_step offload_params gpu_memory_utilization kv_cache_memory_bytes
max_num_batched_tokens max_num_scheduled_tokens long_prefill_token_threshold
long_prefill_token_threshold_adaptive max_num_seqs max_num_active_seqs max_num_queued_reqs
max_num_queued_tokens max_logprobs logprobs_mode use_fp64_gumbel enable_trace_replay disable_log_stats
aggregate_engine_logging revision code_revision hf_token hf_overrides model_class_overrides
tokenizer_revision quantization quantization_config allow_deprecated_quantization enforce_eager
disable_custom_all_reduce enable_shm_tensor_arena language_model_only limit_mm_per_prompt enable_mm_embeds
interleave_mm_strings media_io_kwargs mm_processor_kwargs mm_processor_cache_gb mm_processor_cache_type
mm_hasher_algorithm mm_shm_cache_max_object_size_mb mm_encoder_only mm_encoder_tp_mode
mm_encoder_attn_backend mm_encoder_attn_dtype mm_encoder_fp8_scale_path mm_encoder_fp8_scale_save_path
mm_encoder_fp8_scale_save_margin io_processor_plugin renderer_num_workers skip_mm_profiling
video_pruning_rate video_pruning_method mm_tensor_ipc mm_processor_device mm_ipc_gpu_memory_gb
mm_device_do_normalize enable_lora max_loras max_lora_rank default_mm_loras fully_sharded_loras
max_cpu_loras lora_dtype lora_target_modules enable_tower_connector_lora specialize_active_lora
enable_mixed_moe_lora_format enable_moe_shared_loras max_lora_cls_labels ray_workers_use_nsight
num_gpu_blocks_override model_loader_extra_config ignore_patterns enable_chunked_prefill
disable_chunked_mm_input scheduler_reserve_full_isl prefill_schedule_interval watermark
disable_hybrid_kv_cache_manager structured_outputs_config aux_output_config reasoning_parser
reasoning_parser_plugin speculative_config spec_method spec_model spec_tokens watermark_config
diffusion_config show_hidden_metrics_for_version otlp_traces_endpoint collect_detailed_traces
per_request_spec_decode_metrics kv_cache_metrics kv_cache_metrics_sample custom_histogram_buckets
cudagraph_metrics enable_layerwise_nvtx_tracing enable_mfu_metrics enable_logging_iteration_details
jit_monitor_mode jit_monitor_verbose enable_mm_processor_stats scheduling_policy scheduler_cls pooler_config
compilation_config attention_config engram_config mamba_config kernel_config enable_flashinfer_autotune
monokernel worker_cls worker_extension_cls profiler_config logging_config log_level log_config_file
kv_transfer_config kv_events_config ec_transfer_config ec_manager_config reasoning_config generation_config
enable_sleep_mode sleep_mode_backend sleep_mode_offload_cudagraph sleep_preserve_parameter_names
enable_cumem_allocator enable_nccl_comm_suspend override_generation_config model_impl attention_backend
kv_cache_dtype_skip_layers mamba_cache_dtype mamba_ssm_cache_dtype mamba_block_size prefix_match_unit
mamba_cache_mode enable_mamba_shared_prefix_checkpoint replayssm_buffer_len use_replayssm mamba_backend
mamba_ssu_algorithm enable_mamba_cache_stochastic_rounding mamba_cache_philox_rounds additional_config
use_tqdm_on_load pt_load_map_location logits_processors async_scheduling stream_interval
kv_sharing_fast_prefill swa_bounded_replay optimization_level performance_mode fault_tolerance_config
enable_fault_tolerance kv_offloading_size kv_offloading_backend tokens_only shutdown_timeout watchdog_config
weight_transfer_config fail_on_environ_validation gdn_prefill_backend kda_prefill_backend kda_decode_backend
""".split())
MODEL_DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")  # vllm/config/model.py:100 ModelDType
LOGPROBS_MODES = ("raw_logits", "raw_logprobs", "processed_logits", "processed_logprobs")  # vllm/config/model.py:101
SLEEP_TAGS = ("weights", "kv_cache")  # vllm/v1/executor/abstract.py:36


class VLLMValidationError(ValueError):
    """vllm/exceptions.py:28 (a VLLMError; a ValueError here so tests can match it)."""


@dataclasses.dataclass
class Logprob:  # vllm/logprobs.py:13
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclasses.dataclass
class CompletionOutput:  # vllm/outputs.py:59 (the fields the engine reads)
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None


@dataclasses.dataclass
class RequestOutput:  # vllm/outputs.py:137 (the fields the engine reads)
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = True


@dataclasses.dataclass(kw_only=False)
class SamplingParams:
    """vllm/sampling_params.py:271, its public fields in order with their defaults (lines 285-446)."""

    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    watermarking: bool | None = None
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    prompt_logprob_token_ids: Any = None
    prompt_logprob_start: int | None = None
    logprob_token_ids: list[int] | None = None
    flat_logprobs: bool = False
    detokenize: bool = True
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    output_kind: Any = None
    stream_interval: int | None = None
    skip_clone: bool = False
    output_text_buffer_length: int = 0
    structured_outputs: Any = None
    logit_bias: dict[int, float] | None = None
    allowed_token_ids: list[int] | None = None
    extra_args: dict[str, Any] | None = None
    bad_words: list[str] | None = None
    skip_reading_prefix_cache: bool | None = None
    thinking_token_budget: int | None = None
    repetition_detection: Any = None
    routed_experts_prompt_start: int = 0
    trace_decode_token_ids: list[int] | None = None

    def __post_init__(self) -> None:  # vllm/sampling_params.py:559, the checks of _verify_args (634) we can hit
        if self.seed == -1:
            self.seed = None
        self.stop = [] if self.stop is None else [self.stop] if isinstance(self.stop, str) else self.stop
        if self.n < 1:
            raise VLLMValidationError(f"n must be at least 1, got {self.n}.")
        if not 0.0 <= self.temperature <= 2.0:
            raise VLLMValidationError(f"temperature must be in [0, 2], got {self.temperature}.")
        if not 0.0 < self.top_p <= 1.0:
            raise VLLMValidationError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise VLLMValidationError(f"max_tokens must be at least 1, got {self.max_tokens}.")
        if self.logprobs is not None and self.logprobs != -1 and self.logprobs < 0:
            raise VLLMValidationError(f"logprobs must be non-negative or -1, got {self.logprobs}.")
        if any(not s for s in self.stop):
            raise VLLMValidationError("stop cannot contain an empty string.")
        if self.temperature < 1e-5:  # _SAMPLING_EPS: greedy; _verify_greedy_sampling (769)
            self.top_p, self.top_k, self.min_p = 1.0, 0, 0.0
            if self.n > 1:
                raise VLLMValidationError(f"n must be 1 when using greedy sampling, got {self.n}.")


@dataclasses.dataclass
class EngineArgs:
    """Stands for vllm/engine/arg_utils.py:489: only ENGINE_ARGS are accepted."""

    values: dict

    @classmethod
    def from_kwargs(cls, **kwargs) -> "EngineArgs":
        unknown = sorted(set(kwargs) - ENGINE_ARGS)
        if unknown:
            raise TypeError(f"EngineArgs.__init__() got an unexpected keyword argument {unknown[0]!r}")
        return cls(kwargs)


class Worker:
    """The one in-process worker of ``distributed_executor_backend="external_launcher"``: holds the
    checkpoint's tensors (cast to the engine dtype) by name."""

    def __init__(self, llm: "LLM", weights: dict[str, torch.Tensor]):
        self.llm, self.weights, self.reloads = llm, weights, 0

    # vllm/v1/worker/gpu_worker.py:636 -> vllm/v1/worker/gpu_model_runner.py:5226
    def reload_weights(self, weights_iterator=None, weights_path: str | None = None, is_checkpoint_format: bool = True) -> None:
        if self.llm.sleeping & {"weights"}:
            raise RuntimeError("reload_weights while the weights sleep: their memory is not mapped (wake_up(['weights']) first)")
        if weights_iterator is None or not is_checkpoint_format:
            raise AssertionError("the rollout engine sends checkpoint-format tensors")
        for name, tensor in weights_iterator:
            if name not in self.weights:
                raise KeyError(name)
            if tuple(tensor.shape) != tuple(self.weights[name].shape):
                raise AssertionError(f"{name}: shape {tuple(tensor.shape)} != {tuple(self.weights[name].shape)}")
            self.weights[name] = tensor.detach().to(self.weights[name].dtype).clone()
        self.reloads += 1


def _load_checkpoint(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ValueError(f"no safetensors in {directory}")
    weights: dict[str, torch.Tensor] = {}
    for path in files:
        weights.update(load_file(str(path)))
    return weights


class LLM:
    """vllm/entrypoints/llm.py:62; the methods the engine calls, with their real signatures."""

    instances: list["LLM"] = []

    # vllm/entrypoints/llm.py:177
    def __init__(
        self,
        model: str,
        *,
        runner: str = "auto",
        convert: str = "auto",
        tokenizer: str | None = None,
        tokenizer_mode: str = "auto",
        skip_tokenizer_init: bool = False,
        trust_remote_code: bool = False,
        allowed_local_media_path: str = "",
        allowed_media_domains: list[str] | None = None,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        quantization: str | None = None,
        revision: str | None = None,
        tokenizer_revision: str | None = None,
        chat_template: Path | str | None = None,
        seed: int = 0,
        gpu_memory_utilization: float = 0.92,
        cpu_offload_gb: float = 0,
        offload_group_size: int = 0,
        offload_num_in_group: int = 1,
        offload_prefetch_step: int = 1,
        offload_params: set[str] | None = None,
        enforce_eager: bool = False,
        enable_return_routed_experts: bool = False,
        return_sampling_mask: bool = False,
        disable_custom_all_reduce: bool = False,
        hf_token: bool | str | None = None,
        hf_overrides: Any = None,
        mm_processor_kwargs: dict[str, Any] | None = None,
        pooler_config: Any = None,
        structured_outputs_config: Any = None,
        profiler_config: Any = None,
        attention_config: Any = None,
        kv_cache_memory_bytes: int | None = None,
        compilation_config: Any = None,
        quantization_config: Any = None,
        logits_processors: list | None = None,
        spec_method: str | None = None,
        spec_model: str | None = None,
        spec_tokens: int | None = None,
        **kwargs: Any,
    ) -> None:
        engine_args = EngineArgs.from_kwargs(**kwargs)  # the real LLM builds EngineArgs(..., **kwargs) here
        if dtype not in MODEL_DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}")
        if kwargs.get("logprobs_mode", "raw_logprobs") not in LOGPROBS_MODES:
            raise ValueError(f"unknown logprobs_mode {kwargs['logprobs_mode']!r}")
        if kwargs.get("distributed_executor_backend") == "external_launcher":
            for key in ("RANK", "LOCAL_RANK"):  # vllm/v1/executor/uniproc_executor.py:195
                int(os.environ[key])
        directory = Path(model)
        config = json.loads((directory / "config.json").read_text())
        self.max_model_len = kwargs.get("max_model_len") or config["max_position_embeddings"]
        if self.max_model_len > config["max_position_embeddings"]:  # vllm/config/model.py:2659
            raise ValueError(f"User-specified max_model_len ({self.max_model_len}) is greater than the derived max_model_len "
                             f"(max_position_embeddings={config['max_position_embeddings']})")
        self.kwargs = {"model": model, "dtype": dtype, "seed": seed, "gpu_memory_utilization": gpu_memory_utilization,
                       **engine_args.values}
        self.vocab_size = config["vocab_size"]
        torch_dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float": torch.float32}.get(dtype, torch.float16)
        self.worker = Worker(self, {k: v.to(torch_dtype) for k, v in _load_checkpoint(directory).items()})
        self.sleeping: set[str] = set()
        self.calls: list[tuple] = []
        LLM.instances.append(self)

    # vllm/entrypoints/llm.py:417
    def generate(self, prompts, sampling_params=None, *, use_tqdm=True, lora_request=None, priority=None,
                 tokenization_kwargs=None, mm_processor_kwargs=None) -> list[RequestOutput]:
        if self.sleeping:
            raise RuntimeError(f"generate while {sorted(self.sleeping)} sleep")
        prompts = prompts if isinstance(prompts, list) else [prompts]
        params = sampling_params if sampling_params is not None else SamplingParams()
        if isinstance(params, (list, tuple)):  # vllm/entrypoints/common/offline.py:253 _params_to_seq
            if len(params) != len(prompts):
                raise VLLMValidationError(f"The lengths of prompts ({len(prompts)}) and params ({len(params)}) must be the same.")
        else:
            params = [params] * len(prompts)
        self.calls.append(("generate", prompts, params))
        return [self._request(i, prompt, p) for i, (prompt, p) in enumerate(zip(prompts, params))]

    def _request(self, index: int, prompt: dict, params: SamplingParams) -> RequestOutput:
        ids = list(prompt["prompt_token_ids"])
        if len(ids) >= self.max_model_len:  # vllm/v1/engine/input_processor.py:588
            raise VLLMValidationError(f"The decoder prompt (length {len(ids)}) is longer than the maximum model length")
        budget = min(params.max_tokens or self.max_model_len, self.max_model_len - len(ids))
        outputs = []
        for j in range(params.n):
            seed = None if params.seed is None else params.seed + j  # vllm/v1/engine/parallel_sampling.py:81
            outputs.append(self._sample(j, ids, params, seed, budget))
        return RequestOutput(request_id=str(index), prompt_token_ids=ids, outputs=outputs)

    def _sample(self, j: int, ids: list[int], params: SamplingParams, seed: int | None, budget: int) -> CompletionOutput:
        if params.temperature < 1e-5:  # greedy: a function of the prompt (and the weights) only
            tokens = [(sum(ids) + 7 * k + self.worker.reloads) % self.vocab_size for k in range(budget)]
        else:  # the noise of a seeded request depends on its seed only, as vLLM's per-request generator does
            generator = torch.Generator().manual_seed(seed) if seed is not None else None
            tokens = torch.randint(0, self.vocab_size, (budget,), generator=generator).tolist()
        logprobs = None
        if params.logprobs is not None:
            logprobs = [{t: Logprob(-0.25 * (k + 1), rank=1)} for k, t in enumerate(tokens)]
        return CompletionOutput(index=j, text=" ".join(map(str, tokens)), token_ids=tokens,
                                cumulative_logprob=None, logprobs=logprobs, finish_reason="length")

    # vllm/entrypoints/llm.py:573
    def collective_rpc(self, method, timeout: float | None = None, args: tuple = (), kwargs: dict[str, Any] | None = None) -> list:
        self.calls.append(("collective_rpc", method))
        if isinstance(method, str):  # vllm/v1/serial_utils.py:485 run_method
            if not hasattr(self.worker, method):
                raise NotImplementedError(f"Method {method!r} is not implemented.")
            return [getattr(self.worker, method)(*args, **(kwargs or {}))]
        return [method(self.worker, *args, **(kwargs or {}))]

    # vllm/entrypoints/llm.py:832
    def reset_prefix_cache(self, reset_running_requests: bool = False, reset_connector: bool = False) -> bool:
        self.calls.append(("reset_prefix_cache",))
        return True

    # vllm/entrypoints/llm.py:839 (the executor's, vllm/v1/executor/abstract.py:400)
    def sleep(self, level: int = 1, mode: str = "abort"):
        if not self.kwargs.get("enable_sleep_mode"):
            raise RuntimeError("sleep needs LLM(enable_sleep_mode=True): only its allocator can give memory back")
        if level not in (0, 1, 2):
            raise ValueError(f"sleep level {level}")
        self.calls.append(("sleep", level))
        self.sleeping |= set(SLEEP_TAGS)

    # vllm/entrypoints/llm.py:872 (the executor's, vllm/v1/executor/abstract.py:412)
    def wake_up(self, tags: list[str] | None = None) -> bool:
        if tags is not None and any(tag not in SLEEP_TAGS + ("scheduling",) for tag in tags):
            raise ValueError(f"wake_up tags {tags}")
        self.calls.append(("wake_up", tuple(tags) if tags else None))
        self.sleeping -= set(tags or SLEEP_TAGS)
        return not self.sleeping


def install(monkeypatch) -> None:
    """Make ``import vllm`` give this module's LLM and SamplingParams."""
    import sys
    import types

    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = LLM, SamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    LLM.instances.clear()
