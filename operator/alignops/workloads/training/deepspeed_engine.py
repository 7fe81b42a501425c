"""DeepSpeed ZeRO behind the engine seam: one DeepSpeed engine per trainable over the run's
processes (NCCL on GPUs, gloo on the CPU with ``DS_ACCELERATOR=cpu``), ZeRO stage 0-3 with optional
optimizer and parameter offload.

- Gradient accumulation is the loop's: DeepSpeed runs with ``managed_gradient_accumulation: false``,
  so ``backward`` only accumulates and ``step`` reduces, clips and updates, however many
  micro-batches a step had. The loop's losses are already divided by the whole step's global
  normaliser and multiplied by the world size (DeepSpeed averages gradients over processes).
- Weights stay fp32 (master = model); ``precision`` is an autocast, as in ``PlainEngine``, so a run
  gives the same numbers at any world size and with or without DeepSpeed.
- AdamW is torch's (fused on a GPU); with optimizer offload on a GPU, DeepSpeed's CPU Adam.
- Forward passes of a trained model go through the DeepSpeed engine (``EngineModel``): under ZeRO-3
  its gradients are only right when the engine's forward registered its backward hooks.
- Saving: whole weights gathered a parameter at a time to rank 0, which writes the Hugging Face
  directory; the optimizer state by parameter name (DeepSpeed's ``safe_get_full_optimizer_state``),
  restored on any world size with ``safe_set_full_optimizer_state``.
- Frozen models under ZeRO-3 are sharded inference engines (OpenRLHF's eval config), with their
  weights offloaded when ``offloadParameters`` is set; under ZeRO 0-2 they are whole on each device.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from alignops.contract import DistributedRun
from alignops.workloads.distributed import World
from alignops.workloads.models.adapter import save_model_checkpoint
from alignops.workloads.models.loading import autocast_dtype, pick_device, place_frozen
from alignops.workloads.training.optimization import ScheduleState, Trainable, make_scheduler
from alignops.workloads.training.optimizer_state import STATE_KEYS, OptimizerStateReader, write_optimizer_state

os.environ.setdefault("DS_ACCELERATOR", "cpu" if not torch.cuda.is_available() else "cuda")
import deepspeed  # noqa: E402  (its accelerator is chosen on import)
from deepspeed.utils import safe_get_full_optimizer_state, safe_set_full_optimizer_state  # noqa: E402

logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
deepspeed.utils.logger.setLevel(logging.WARNING)

NEVER = 10**9  # DeepSpeed's own step printing: the loop logs


class EngineModel:
    """A trained model as the stages see it: calls go through the DeepSpeed engine's forward,
    everything else (``config``, ``generate``, ``parameters``, ``save_pretrained``...) is the
    Hugging Face module's (the DeepSpeed engine's own ``config`` is its JSON config)."""

    def __init__(self, ds_engine, module: torch.nn.Module):
        object.__setattr__(self, "_ds", ds_engine)
        object.__setattr__(self, "_module", module)

    def __call__(self, *args, **kwargs):
        return self._ds(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._module, name)

    def __setattr__(self, name: str, value) -> None:
        setattr(self._module, name, value)

    def train(self, mode: bool = True):
        self._ds.train(mode)
        return self

    def eval(self):
        self._ds.eval()
        return self

    @property
    def module(self) -> torch.nn.Module:
        return self._module


def ds_config(hp: Any, run: DistributedRun, learning_rate: float, inference: bool = False) -> dict:
    on_gpu = torch.cuda.is_available()
    zero: dict[str, Any] = {"stage": run.zero_stage, "contiguous_gradients": True,
                            "overlap_comm": on_gpu and run.zero_stage == 2}
    if run.offload_optimizer and not inference:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
    if run.offload_parameters and run.zero_stage == 3:
        zero["offload_param"] = {"device": "cpu", "pin_memory": on_gpu}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": 1,  # batches are the loop's; DeepSpeed only checks the product
        "gradient_accumulation_steps": 1,
        "managed_gradient_accumulation": False,
        "zero_optimization": zero,
        "steps_per_print": NEVER,
        "wall_clock_breakdown": False,
    }
    if inference:
        return config
    config["gradient_clipping"] = hp.max_grad_norm
    cpu_adam = run.offload_optimizer and on_gpu  # DeepSpeed's CPU Adam: the fast path for offloaded state
    params = {"lr": learning_rate, "weight_decay": hp.weight_decay, "betas": [0.9, 0.999], "eps": 1e-8}
    if not cpu_adam:
        params["torch_adam"] = True
        if on_gpu and not run.offload_optimizer:
            params["fused"] = True
    config["optimizer"] = {"type": "AdamW", "params": params}
    config["zero_force_ds_cpu_optimizer"] = cpu_adam
    config["zero_allow_untested_optimizer"] = True
    return config


def _base_optimizer(ds_engine) -> torch.optim.Optimizer:
    optimizer = ds_engine.optimizer
    return getattr(optimizer, "optimizer", optimizer)


def _ensure_adam_state(ds_engine) -> None:
    """Create the (flat, partitioned) AdamW state DeepSpeed otherwise creates at the first step, so
    a resumed run can write the saved state into it before that step. Mirrors torch's lazy init."""
    optimizer = ds_engine.optimizer
    flats = getattr(optimizer, "single_partition_of_fp32_groups", None) or getattr(optimizer, "fp32_partitioned_groups_flat", None)
    if flats is None:  # ZeRO-0: a plain torch optimizer over the module's parameters
        return
    inner = _base_optimizer(ds_engine)
    for flat in flats:
        if not inner.state.get(flat):
            inner.state[flat] = {"step": torch.zeros((), dtype=torch.float32),
                                 **{key: torch.zeros_like(flat) for key in STATE_KEYS}}
    if hasattr(optimizer, "_lazy_init_hp_params_optimizer_state"):  # ZeRO-1/2 link the fragments at the first step
        optimizer._lazy_init_hp_params_optimizer_state()


class DeepSpeedEngine:
    def __init__(self, trainables: Sequence[Trainable], hp: Any, total_steps: int, world: World, run: DistributedRun):
        self.world, self.run, self.hp = world, run, hp
        self.trainables = list(trainables)
        self.engines, self.models, self.schedulers = [], [], []
        device = pick_device()
        for trainable in self.trainables:
            module = trainable.model.to(device)
            lr = trainable.learning_rate if trainable.learning_rate is not None else hp.learning_rate
            parameters = [p for p in module.parameters() if p.requires_grad]
            ds_engine, *_ = deepspeed.initialize(model=module, model_parameters=parameters, config=ds_config(hp, run, lr))
            self.engines.append(ds_engine)
            self.models.append(EngineModel(ds_engine, module))
            self.schedulers.append(make_scheduler(_base_optimizer(ds_engine), hp.lr_scheduler, hp.warmup_steps, total_steps))
        self.model = self.models[0]
        self.autocast_dtype = autocast_dtype(hp.precision, device)
        self.device = device
        if device.type == "cpu":
            release_freed_memory()  # the whole copies ZeRO just sharded: back to the system


    # -- training ---------------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def zero_grad(self) -> None:
        for ds_engine in self.engines:
            ds_engine.zero_grad()

    def backward(self, losses: Sequence[torch.Tensor]) -> None:
        if len(losses) != len(self.engines):
            raise ValueError(f"{len(losses)} losses for {len(self.engines)} trained models")
        for ds_engine, loss in zip(self.engines, losses):
            ds_engine.backward(loss)

    def step(self, max_grad_norm: float) -> list[float]:
        norms = []
        for ds_engine, scheduler in zip(self.engines, self.schedulers):
            ds_engine.step()
            scheduler.step()
            norm = ds_engine.get_global_grad_norm()
            norms.append(float(norm) if norm is not None else float("nan"))
        return norms

    def learning_rate(self) -> float:
        return self.schedulers[0].get_last_lr()[0]

    # -- saving and restoring ---------------------------------------------------------------------
    def _engine_of(self, model) -> Any:
        for ds_engine, wrapped in zip(self.engines, self.models):
            if model is wrapped or model is wrapped.module:
                return ds_engine
        raise ValueError("save_pretrained: not a model this engine trains")

    def _host_weights(self, module) -> dict[str, torch.Tensor] | None:
        """The module's whole weights in the main process's memory (gathered shard by shard under
        ZeRO-3; every process takes part); None on the other processes."""
        state = {}
        for name, param in module.named_parameters():
            with deepspeed.zero.GatheredParameters([param], modifier_rank=None, enabled=self.run.zero_stage == 3):
                if self.world.is_main:
                    state[name] = param.detach().to("cpu", copy=True)
        if not self.world.is_main:
            return None
        state.update({name: buffer.detach().to("cpu", copy=True) for name, buffer in module.named_buffers()
                      if name in module.state_dict()})
        return state

    def save_pretrained(self, model, directory: Path) -> None:
        module = self._engine_of(model).module
        state = self._host_weights(module)
        if state is not None:
            save_model_checkpoint(module, directory, state)
        self.world.barrier()

    def snapshot(self, directory: Path, optimizer: bool) -> Callable[[], None]:
        # the optimizer state is gathered and written parameter by parameter (memory stays one
        # parameter's), so it is written now; the weights are gathered now and written later
        module = self.engines[0].module
        state = self._host_weights(module)
        if optimizer:
            self._write_state(directory)

        def write() -> None:
            if state is not None:
                save_model_checkpoint(module, directory, state)
        return write

    def _write_state(self, directory: Path) -> None:
        for ds_engine in self.engines:  # a checkpoint before the first step (a round with nothing to learn) has zero moments
            _ensure_adam_state(ds_engine)

        def states():
            for trainable, ds_engine in zip(self.trainables, self.engines):
                for name, param in ds_engine.module.named_parameters():
                    if not param.requires_grad:
                        continue
                    full = {key: self._full_state(param, key) for key in STATE_KEYS}
                    if self.world.is_main:
                        yield (f"{trainable.prefix}.{name}" if trainable.prefix else name), full

        step = self.engines[0].global_steps
        if self.world.is_main:
            write_optimizer_state(directory, states(), step)
            ScheduleState.save(self.schedulers, directory)
        else:
            for _ in states():  # the gathers are collective: every process walks the parameters
                pass
        self.world.barrier()

    def _full_state(self, param, key: str) -> torch.Tensor:
        if _base_optimizer(self.engines[0]) is self.engines[0].optimizer:  # ZeRO-0: torch's own state
            for ds_engine in self.engines:
                state = _base_optimizer(ds_engine).state.get(param)
                if state is not None:
                    return state[key]
            return torch.zeros_like(param)
        value = safe_get_full_optimizer_state(param, key)
        return value if value is not None else torch.zeros(param.ds_shape if hasattr(param, "ds_shape") else param.shape)

    def load_state(self, directory: Path) -> None:
        reader = OptimizerStateReader(directory)
        for trainable, ds_engine in zip(self.trainables, self.engines):
            _ensure_adam_state(ds_engine)
            inner = _base_optimizer(ds_engine)
            for name, param in ds_engine.module.named_parameters():
                if not param.requires_grad:
                    continue
                saved = reader.state(f"{trainable.prefix}.{name}" if trainable.prefix else name)
                if inner is ds_engine.optimizer:  # ZeRO-0
                    inner.state[param] = {"step": torch.tensor(float(reader.step)),
                                          **{k: v.to(param.device, param.dtype) for k, v in saved.items()}}
                    continue
                for key in STATE_KEYS:
                    safe_set_full_optimizer_state(param, saved[key].to(self.device), key)
            for state in inner.state.values():
                state["step"] = torch.tensor(float(reader.step), dtype=torch.float32)
            ds_engine.global_steps = reader.step
        ScheduleState.load(self.schedulers, [_base_optimizer(e) for e in self.engines], directory)

    # -- generation and frozen models -------------------------------------------------------------
    def gathered(self) -> contextlib.AbstractContextManager:
        if self.run.zero_stage != 3:
            return contextlib.nullcontext()
        parameters = [p for ds_engine in self.engines for p in ds_engine.module.parameters()]
        return deepspeed.zero.GatheredParameters(parameters, modifier_rank=None)

    def frozen(self, model: torch.nn.Module) -> torch.nn.Module:
        model = place_frozen(model, self.device)
        if self.run.zero_stage != 3 or not isinstance(model, torch.nn.Module):  # only ZeRO-3 shards a frozen model
            return model
        ds_engine, *_ = deepspeed.initialize(model=model, config=ds_config(self.hp, self.run, 0.0, inference=True))
        ds_engine.eval()
        if self.device.type == "cpu":
            release_freed_memory()
        return EngineModel(ds_engine, model)


def release_freed_memory() -> None:
    """Hand memory freed on the heap back to the system (glibc keeps it otherwise, and a CPU run's
    resident set would still count the whole model after ZeRO-3 sharded it)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass
