"""Real model inputs through `alignops run`, as a user brings them: a Hugging Face directory saved with
save_pretrained (a Qwen2 with a byte-level BPE tokenizer and a ChatML template) on file:// and on
S3, and the same model from the Hub through an offline cache laid out as huggingface_hub lays it
out; chat `messages` SFT, then DPO on pairs; LoRA adapters with a merged model at the end. Each
pipeline Succeeds and its output loads with AutoModelForCausalLM."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import boto3
import pytest
import torch
import yaml
from safetensors.torch import load_file

from hf_models import WORDS, chat_prompt, lay_out_hub_cache, pair_records, save_tiny_model, sft_records, write_jsonl
from suite import run_cli

pytestmark = pytest.mark.slow

HYPER = {"maxSteps": 3, "batchSize": 4, "learningRate": 0.01, "warmupSteps": 1, "logEvery": 1, "evalSize": 4, "maxLength": 48}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("hf") / "tiny-chat")


def _job(tmp_path: Path, model: dict, sft: dict | None = None, dpo: dict | None = None, stages=("sft", "dpo")) -> Path:
    chat = write_jsonl(tmp_path / "data" / "chat.jsonl", sft_records())
    pairs = write_jsonl(tmp_path / "data" / "pairs.jsonl", pair_records())
    all_stages = {
        "sft": {"name": "sft", "type": "sft", "datasets": {"train": {"uri": chat}, "eval": {"uri": chat}},
                "hyperparameters": HYPER, **(sft or {})},
        "dpo": {"name": "dpo", "type": "preference", "algorithm": "dpo", "policy": {"fromStage": "sft"},
                "datasets": {"train": {"uri": pairs}, "eval": {"uri": pairs}}, "hyperparameters": HYPER, **(dpo or {})},
    }
    job = {"apiVersion": "alignops.io/v1alpha1", "kind": "AlignmentJob", "metadata": {"name": "real"},
           "spec": {"model": model, "stages": [all_stages[s] for s in stages]}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _run(tmp_path: Path, manifest: Path, env: dict | None = None) -> dict:
    out = run_cli("run", str(manifest), "--workdir", str(tmp_path / "work"), env={"OMP_NUM_THREADS": "1", **(env or {})})
    status = json.loads((tmp_path / "work" / "real" / "status.json").read_text())["status"]
    assert out.returncode == 0 and status["phase"] == "Succeeded", out.stdout[-3000:] + out.stderr[-3000:]
    return {s["name"]: s for s in status["stages"]}


def _loads_and_answers(uri: str):
    """The output loads with plain transformers and generates, stopping at an end-of-turn token."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = uri.removeprefix("file://")
    model = AutoModelForCausalLM.from_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    prompt = tokenizer(chat_prompt(WORDS[0]), return_tensors="pt", add_special_tokens=False)
    out = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > prompt.input_ids.shape[1]
    return model


def test_a_model_directory_trains_lora_sft_then_dpo_into_a_merged_model(tmp_path, model_dir):
    """file:// directory; LoRA SFT keeps only the adapter, LoRA DPO on top of it (its reference: the
    SFT model, i.e. the policy with the new adapter off) writes the merged model and the adapter."""
    before = {p.name: p.read_bytes() for p in model_dir.iterdir()}
    manifest = _job(tmp_path, {"uri": f"file://{model_dir}"}, sft={"adapter": {"rank": 4, "alpha": 16}},
                    dpo={"adapter": {"rank": 4, "targetModules": "q_proj,v_proj", "merge": True}})
    stages = _run(tmp_path, manifest)
    sft_dir = Path(stages["sft"]["checkpointUri"].removeprefix("file://"))
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in sft_dir.iterdir()}
    assert not (sft_dir / "model.safetensors").exists()
    dpo_dir = Path(stages["dpo"]["checkpointUri"].removeprefix("file://"))
    config = json.loads((dpo_dir / "adapter" / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"] and config["r"] == 4
    adapter = load_file(dpo_dir / "adapter" / "adapter_model.safetensors")
    assert adapter and all(("q_proj" in k or "v_proj" in k) and "lora_" in k for k in adapter)
    merged = _loads_and_answers(stages["dpo"]["checkpointUri"])
    # the merged model is the SFT model (base + SFT adapter) plus the DPO adapter, through peft
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    sft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(model_dir)), str(sft_dir)).merge_and_unload()
    expected = PeftModel.from_pretrained(sft_model, str(dpo_dir / "adapter")).merge_and_unload()
    ids = torch.tensor([[5, 17, 40, 2, 9]])
    assert torch.allclose(merged(ids).logits, expected(ids).logits, atol=1e-5)
    assert stages["dpo"]["metrics"]["klBefore"] == 0.0 and stages["dpo"]["metrics"]["klAfter"] > 0
    assert {p.name: p.read_bytes() for p in model_dir.iterdir()} == before  # the input is never written


def test_a_model_directory_on_s3(tmp_path, model_dir, s3_bucket, s3_env):
    s3 = boto3.client("s3")
    for path in model_dir.iterdir():
        s3.upload_file(str(path), s3_bucket, f"models/tiny-chat/{path.name}")
    manifest = _job(tmp_path, {"uri": f"s3://{s3_bucket}/models/tiny-chat"}, stages=("sft",))
    stages = _run(tmp_path, manifest, env=s3_env)
    assert stages["sft"]["metrics"]["evalLossAfter"] < stages["sft"]["metrics"]["evalLossBefore"]
    _loads_and_answers(stages["sft"]["checkpointUri"])


def test_a_hub_model_from_an_offline_cache(tmp_path, model_dir):
    """model.hub with a revision, and the DPO reference named as the same Hub model; HF_HUB_OFFLINE=1
    reads only the cache (no network here at all)."""
    hf_home = tmp_path / "hf-home"
    lay_out_hub_cache(hf_home, "acme/tiny-chat", model_dir)
    manifest = _job(tmp_path, {"hub": "acme/tiny-chat", "revision": "main"}, dpo={"reference": {"hub": "acme/tiny-chat"}})
    stages = _run(tmp_path, manifest, env={"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"})
    assert stages["dpo"]["metrics"]["klBefore"] > 0  # the reference is the base model, not the SFT policy
    _loads_and_answers(stages["dpo"]["checkpointUri"])


def test_a_hub_model_missing_from_the_offline_cache_is_a_configuration_error(tmp_path, model_dir, monkeypatch):
    from huggingface_hub import constants

    from alignops.workloads.models.hf_dir import ModelDirError
    from alignops.workloads.models.hub import hub_snapshot

    hf_home = tmp_path / "hf-home"
    snapshot = lay_out_hub_cache(hf_home, "acme/tiny-chat", model_dir)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(hf_home))
    assert hub_snapshot("acme/tiny-chat", "main", trust_remote_code=False) == snapshot
    with pytest.raises(ModelDirError, match="acme/absent@main is not in the Hub cache .* HF_HUB_OFFLINE=1"):
        hub_snapshot("acme/absent", "main", trust_remote_code=False)
    with pytest.raises(ModelDirError, match="acme/tiny-chat@v9 is not in the Hub cache"):
        hub_snapshot("acme/tiny-chat", "v9", trust_remote_code=False)
