"""The trainer's weights under checkpoint names for vLLM's reload: for MoE models transformers 5 fuses
the experts in memory, and what a sync sends must be what ``save_pretrained`` writes (names, shapes,
values), converted and sent one layer at a time."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, MixtralConfig, MixtralForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

import fake_vllm
from alignops.workloads.rollout.vllm_engine import VllmEngine, VllmSettings
from alignops.workloads.rollout import weights
from alignops.workloads.rollout.weights import checkpoint_names, checkpoint_weights

# tiny MoE models of transformers 5: 4 (3) experts of width 8, hidden 16
QWEN3_MOE = (Qwen3MoeForCausalLM, dict(vocab_size=64, hidden_size=16, intermediate_size=32, moe_intermediate_size=8,
                                       num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                       num_experts=4, num_experts_per_tok=2, max_position_embeddings=64), Qwen3MoeConfig)
MIXTRAL = (MixtralForCausalLM, dict(vocab_size=64, hidden_size=16, intermediate_size=8, num_hidden_layers=2,
                                    num_attention_heads=2, num_key_value_heads=1, num_local_experts=3, num_experts_per_tok=2,
                                    max_position_embeddings=64), MixtralConfig)


def _tiny(spec):
    cls, kwargs, config_cls = spec
    torch.manual_seed(0)
    return cls(config_cls(**kwargs))


def _saved(model, directory) -> dict[str, torch.Tensor]:
    model.save_pretrained(str(directory))
    return load_file(str(directory / "model.safetensors"))


@pytest.mark.parametrize("spec", [QWEN3_MOE, MIXTRAL], ids=["qwen3_moe", "mixtral"])
def test_fused_experts_go_out_under_the_checkpoints_names(spec, tmp_path):
    model = _tiny(spec)
    in_memory = dict(model.named_parameters())
    # what transformers 5 holds in memory: the experts fused into 3-d tensors
    fused = [name for name in in_memory if name.endswith("experts.gate_up_proj")]
    assert fused and in_memory[fused[0]].dim() == 3
    checkpoint = _saved(model, tmp_path)
    sent = dict(checkpoint_weights(model))
    assert set(sent) == set(checkpoint) == checkpoint_names(tmp_path)
    for name, tensor in checkpoint.items():
        assert sent[name].shape == tensor.shape and torch.equal(sent[name], tensor), name
    # per-expert names, as vLLM's expert mapping expects them
    expert = r"model\.layers\.0\.(mlp|block_sparse_moe)\.experts\.2\.(gate_proj|up_proj|down_proj|w1|w2|w3)\.weight"
    assert sum(bool(re.fullmatch(expert, name)) for name in sent) == 3


def test_weights_go_out_one_layer_after_another(monkeypatch):
    # vLLM's layerwise reload buffers a layer until all of it arrived; the conversion's copies (the
    # gate/up split) must be one layer's at a time: each conversion call sees at most one layer
    model = _tiny(QWEN3_MOE)
    calls = []
    real = weights.revert_weight_conversion

    def spy(model, state_dict):
        calls.append({m.group(1) for name in state_dict if (m := re.match(r"model\.layers\.(\d+)\.", name))})
        return real(model, state_dict)

    monkeypatch.setattr(weights, "revert_weight_conversion", spy)
    layers = [int(m.group(1)) for name, _ in checkpoint_weights(model) if (m := re.match(r"model\.layers\.(\d+)\.", name))]
    assert layers == sorted(layers) and set(layers) == {0, 1}
    assert [len(c) for c in calls] == [0, 1, 1, 0]  # embeddings, layer 0, layer 1, final norm and head


def test_a_model_loaded_from_its_checkpoint_round_trips(tmp_path):
    checkpoint = _saved(_tiny(MIXTRAL), tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path))  # records the conversions it applied
    sent = dict(checkpoint_weights(loaded))
    assert set(sent) == set(checkpoint) and all(torch.equal(sent[k], checkpoint[k]) for k in checkpoint)


def test_a_moe_policy_syncs_into_the_engine(tmp_path, monkeypatch):
    # the engine starts from the checkpoint; the trainer updates; after the sync the engine holds
    # exactly what a checkpoint of the updated policy would hold
    fake_vllm.install(monkeypatch)
    for key in ("RANK", "LOCAL_RANK"):
        monkeypatch.setenv(key, "0")
    model = _tiny(QWEN3_MOE)
    model.save_pretrained(str(tmp_path / "start"))
    engine = VllmEngine(VllmSettings(tmp_path / "start", 0.3, 0, 64, "float32", colocated=True))
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(1.5)
    engine.sleep()
    engine.update_weights(model)
    expected = _saved(model, tmp_path / "after")
    held = fake_vllm.LLM.instances[-1].worker.weights
    assert set(held) == set(expected) and all(torch.equal(held[k], expected[k]) for k in expected)
