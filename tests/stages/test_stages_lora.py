"""LoRA adapters (peft): the merge written into a checkpoint is peft's own merge, the reference is the
policy with its adapter off (the same parameters, no copy), a stopped LoRA DPO stage resumes to
exactly the adapter and merged model of an uninterrupted run, and reward and rl stages train
adapters too (a reward adapter keeps its new score head; rl scores with it)."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaForSequenceClassification

from alignops.api.common import Architecture, LoraAdapter
from alignops.contract import EXIT_OK, EXIT_SIGTERM
from alignops.workloads import context
from alignops.workloads.models.adapter import AdapterBase, add_adapter, adapter_reference, merged_state_dict
from alignops.workloads.models.build import build_model, build_scalar_head_model, build_tokenizer
from stages.conftest import TINY_ARCH

ARCH = Architecture.model_validate({"hiddenSize": 32, "layers": 1, "heads": 2, "maxPositions": 32, "seed": 0})
LORA = LoraAdapter.model_validate({"rank": 4, "alpha": 16, "merge": True})


def _perturbed(model):
    """LoRA's B starts at zero (the adapter adds nothing): give every adapter weight a value."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model


@pytest.mark.parametrize("head", [None, LlamaForSequenceClassification], ids=["causal", "reward-head"])
def test_the_merged_state_dict_is_peft_merge_and_unload(head):
    tokenizer = build_tokenizer()
    model = build_model(ARCH, tokenizer) if head is None else build_scalar_head_model(ARCH, tokenizer, head)
    wrapped = _perturbed(add_adapter(model, LORA, AdapterBase(None)))
    ours = merged_state_dict(wrapped.state_dict(), wrapped.peft_config["default"])
    original_head = model.score.original_module.weight.clone() if head is not None else None
    reference = wrapped.merge_and_unload().state_dict()
    assert set(ours) <= set(reference) and set(reference) - set(ours) <= {"lm_head.weight"}  # tied to the embedding
    assert all(torch.equal(ours[k], reference[k]) for k in ours)
    if head is not None:  # the trained copy of the new head, not the original
        assert "score.weight" in ours and not torch.equal(ours["score.weight"], original_head)


def test_the_reference_is_the_policy_with_its_adapter_off():
    tokenizer = build_tokenizer()
    base = build_model(ARCH, tokenizer)
    ids = torch.tensor([tokenizer("12+30=42", add_special_tokens=False).input_ids])
    with torch.no_grad():
        expected = base(input_ids=ids).logits.clone()
    policy = _perturbed(add_adapter(base, LORA, AdapterBase(None)))
    policy.train()
    reference = adapter_reference(policy)
    got = reference(input_ids=ids).logits
    assert torch.equal(got, expected) and not got.requires_grad
    assert not torch.allclose(policy(input_ids=ids).logits, expected)  # the adapter is on again
    assert policy.training  # the policy's mode is its own
    assert all(a is b for a, b in zip(reference.parameters(), policy.parameters()))  # no second copy
    reference.requires_grad_(False).eval()  # what freeze() does: it must leave the policy alone
    assert any(p.requires_grad for p in policy.parameters()) and policy.training
    assert adapter_reference(build_model(ARCH, tokenizer)) is None  # a plain model has no shared reference


DPO = {
    "name": "dpo", "type": "preference", "algorithm": "dpo", "adapter": {"rank": 4, "merge": True},
    "datasets": {"train": {"generator": "arithmetic", "size": 24, "seed": 5}},
    "hyperparameters": {"maxSteps": 6, "batchSize": 8, "learningRate": 0.02, "warmupSteps": 1,
                        "checkpointEvery": 100, "logEvery": 1, "evalSize": 8, "maxLength": 16},
}


def _final(root):
    return root / "default" / "tiny" / "dpo" / "checkpoint-6"


@pytest.mark.slow
def test_lora_dpo_writes_adapter_and_merged_model_and_resumes_exactly(stage_run, tmp_path, monkeypatch):
    code, straight = stage_run(DPO, tmp_path / "a")
    assert code == EXIT_OK, straight
    final = _final(tmp_path / "a")
    assert {"adapter_config.json", "adapter_model.safetensors", "adapter_base.json"} <= {p.name for p in (final / "adapter").iterdir()}
    adapter = load_file(final / "adapter" / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)  # the adapter only: no base weights
    merged = AutoModelForCausalLM.from_pretrained(str(final))  # loads without peft
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert straight["metrics"]["klAfter"] > 0 and straight["metrics"]["referenceSequencesScored"] > 0

    log = context.MetricsSink.log

    def stop_after_step_3(self, record):
        log(self, record)
        if record.get("step") == 3 and "loss" in record:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(context.MetricsSink, "log", stop_after_step_3)
    code, stopped = stage_run(DPO, tmp_path / "b")
    assert code == EXIT_SIGTERM
    monkeypatch.setattr(context.MetricsSink, "log", log)
    code, resumed = stage_run(DPO, tmp_path / "b")
    assert code == EXIT_OK
    for name in ("adapter/adapter_model.safetensors", "model.safetensors"):
        a, b = load_file(final / name), load_file(_final(tmp_path / "b") / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert resumed["metrics"]["lossFirst"] == straight["metrics"]["lossFirst"]


@pytest.mark.slow
def test_a_reward_adapter_keeps_its_head_and_rl_trains_an_adapter_scored_by_it(stage_run, tmp_path):
    reward = {"name": "rm", "type": "reward", "adapter": {"rank": 4},
              "datasets": {"train": {"generator": "arithmetic", "size": 16, "format": "pairs"}},
              "hyperparameters": {"maxSteps": 2, "batchSize": 8, "evalSize": 8, "maxLength": 16}}
    code, result = stage_run(reward, tmp_path / "rm")
    assert code == EXIT_OK, result
    directory = tmp_path / "rm" / "default" / "tiny" / "rm" / "checkpoint-2"
    assert not (directory / "model.safetensors").exists()
    saved = load_file(directory / "adapter_model.safetensors")
    assert any(k.endswith("score.weight") for k in saved)  # the new head is trained whole and saved

    rl = {"name": "rl", "type": "rl", "algorithm": "grpo", "adapter": {"rank": 4},
          "rewardModel": {"uri": result["checkpointUri"]},
          "datasets": {"train": {"generator": "arithmetic", "size": 16}},
          "hyperparameters": {"rounds": 1, "promptsPerRound": 2, "samplesPerPrompt": 2, "maxNewTokens": 3, "evalSize": 4,
                              "batchSize": 4, "miniBatches": 1, "rewards": [{"name": "reward_model"}], "kl": {"beta": 0.1}}}
    code, result = stage_run(rl, tmp_path / "rl")
    assert code == EXIT_OK, result
    rl_dir = next((tmp_path / "rl" / "default" / "tiny" / "rl" / "round-1").glob("checkpoint-*"))
    assert (rl_dir / "adapter_model.safetensors").exists() and not (rl_dir / "model.safetensors").exists()
    # scored by the reward adapter merged onto its base (a random head gives non-zero scores), with
    # a KL to the reference (the policy with its adapter off)
    assert result["metrics"]["rewardFirst"] != 0.0 and "kl" in result["metrics"]


@pytest.mark.slow
def test_a_full_ppo_stage_starts_from_a_lora_checkpoint(stage_run, tmp_path):
    """The adapter checkpoint is merged onto its base for the next stage, which trains every weight
    (nothing stays frozen from peft), and the critic starts from the same merged transformer."""
    sft = {"name": "sft", "type": "sft", "adapter": {"rank": 4}, "datasets": {"train": {"generator": "arithmetic", "size": 16}},
           "hyperparameters": {"maxSteps": 2, "batchSize": 8, "evalSize": 4, "maxLength": 16}}
    code, result = stage_run(sft, tmp_path / "sft")
    assert code == EXIT_OK, result
    rl = {"name": "rl", "type": "rl", "algorithm": "ppo", "policy": {"uri": result["checkpointUri"]},
          "datasets": {"train": {"generator": "arithmetic", "size": 16}},
          "hyperparameters": {"rounds": 1, "promptsPerRound": 2, "samplesPerPrompt": 2, "maxNewTokens": 3, "evalSize": 4,
                              "batchSize": 4, "miniBatches": 1, "learningRate": 0.01, "rewards": [{"name": "exact_answer"}],
                              "kl": {"beta": 0.1}}}
    code, out = stage_run(rl, tmp_path / "rl")
    assert code == EXIT_OK, out
    directory = next((tmp_path / "rl" / "default" / "tiny" / "rl" / "round-1").glob("checkpoint-*"))
    trained = load_file(directory / "model.safetensors")
    start = build_model(Architecture.model_validate(TINY_ARCH), build_tokenizer())
    # LoRA never touched the embedding; the full rl stage did
    assert not torch.equal(trained["model.embed_tokens.weight"], start.model.embed_tokens.weight)
    assert (directory / "critic" / "model.safetensors").exists()


def test_an_adapter_names_its_base_for_peft_and_for_the_next_stage(tmp_path):
    from alignops.workloads.models.adapter import adapter_base, save_model_checkpoint

    wrapped = add_adapter(build_model(ARCH, build_tokenizer()), LoraAdapter.model_validate({"rank": 2}),
                          AdapterBase("hf://acme/tiny-chat@v2"))
    save_model_checkpoint(wrapped, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    # peft users load it as PeftModel.from_pretrained(AutoModel...("acme/tiny-chat", revision="v2"), dir)
    assert (config["base_model_name_or_path"], config["revision"]) == ("acme/tiny-chat", "v2")
    assert adapter_base(tmp_path) == AdapterBase("hf://acme/tiny-chat@v2")
    (tmp_path / "adapter_base.json").unlink()  # an adapter trained elsewhere: its config names the base
    assert adapter_base(tmp_path).location == "hf://acme/tiny-chat@v2"
