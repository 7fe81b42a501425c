"""Plain Hugging Face model directories as inputs: what save_pretrained leaves (one file or shards
with an index) loads and trains; a directory that can never load is refused before any work, with
exit 78 naming the file and the fix (a file cut short, no config, a shard missing, pickles only, a
config and weights of different models, code shipped with the model and not trusted). The model's
own tokenizer is used as it is: pad = EOS where it has none, no BOS where it has none, every
end-of-turn id of its generation config ends a response."""

from __future__ import annotations

import json
import shutil

import pytest

from alignops.contract import EXIT_CONFIG, EXIT_OK
from alignops.workloads.models.hf_dir import ModelDirError, check_model_directory
from hf_models import WORDS, chat_prompt, save_tiny_model, sft_records, write_jsonl


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("hf") / "tiny")


def _copy(model_dir, tmp_path):
    return shutil.copytree(model_dir, tmp_path / "model")


def _sft(tmp_path, model_uri: str, **hyper) -> dict:
    data = write_jsonl(tmp_path / "sft.jsonl", sft_records())
    return {"name": "sft", "type": "sft", "policy": {"uri": model_uri},
            "datasets": {"train": {"uri": data}, "eval": {"uri": data}},
            "hyperparameters": {"maxSteps": 1, "batchSize": 4, "maxLength": 48, "evalSize": 4, **hyper}}


def _break_truncated(d):
    weights = d / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    return "model.safetensors", "cut short"


def _break_config(d):
    (d / "config.json").unlink()
    return "config.json", "not a Hugging Face model directory"


def _break_pickles(d):
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    return "pytorch_model.bin", "convert them with save_pretrained(safe_serialization=True)"


def _break_vocab(d):
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "vocab_size": config["vocab_size"] + 7}))
    return "embed_tokens.weight", "different models"


def _break_tokenizer(d):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (d / name).unlink()
    return "no tokenizer", "tokenizer.save_pretrained"


def _break_header(d):
    weights = d / "model.safetensors"
    weights.write_bytes(b"\xff" * 8 + weights.read_bytes()[8:])
    return "model.safetensors", "is not a safetensors file"


@pytest.mark.parametrize("damage", [_break_truncated, _break_config, _break_pickles, _break_vocab, _break_tokenizer, _break_header],
                         ids=lambda f: f.__name__.removeprefix("_break_"))
def test_a_broken_model_directory_is_refused_naming_the_file(model_dir, tmp_path, damage):
    directory = _copy(model_dir, tmp_path)
    check_model_directory(directory, "file://x", trust_remote_code=False)  # intact: passes
    names, fix = damage(directory)
    with pytest.raises(ModelDirError) as error:
        check_model_directory(directory, "file://x", trust_remote_code=False)
    assert names in str(error.value) and fix in str(error.value)


def test_a_sharded_directory_is_checked_shard_by_shard(tmp_path):
    directory = save_tiny_model(tmp_path / "sharded", max_shard_size="20KB")
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    check_model_directory(directory, "file://x", trust_remote_code=False)
    (directory / shards[-1]).unlink()
    with pytest.raises(ModelDirError, match=f"names shard {shards[-1]}, which is missing"):
        check_model_directory(directory, "file://x", trust_remote_code=False)


@pytest.mark.slow
def test_a_sharded_directory_trains_and_a_truncated_one_exits_78(stage_run, tmp_path):
    directory = save_tiny_model(tmp_path / "sharded", max_shard_size="20KB")
    code, result = stage_run(_sft(tmp_path, f"file://{directory}"), tmp_path / "store")
    assert code == EXIT_OK, result
    assert result["metrics"]["evalLossBefore"] > 0
    _break_truncated_shard = sorted(directory.glob("model-*.safetensors"))[0]
    _break_truncated_shard.write_bytes(_break_truncated_shard.read_bytes()[:-4])
    code, result = stage_run(_sft(tmp_path, f"file://{directory}"), tmp_path / "store2")
    assert code == EXIT_CONFIG
    assert _break_truncated_shard.name in result["message"] and "download it again" in result["message"]


@pytest.mark.slow
def test_remote_code_is_refused_unless_trusted(stage_run, model_dir, tmp_path):
    directory = _copy(model_dir, tmp_path)
    config = json.loads((directory / "config.json").read_text())
    config.update(model_type="acme_tiny", auto_map={"AutoConfig": "modeling_acme.AcmeConfig",
                                                     "AutoModelForCausalLM": "modeling_acme.AcmeForCausalLM"})
    (directory / "config.json").write_text(json.dumps(config))
    code, result = stage_run(_sft(tmp_path, f"file://{directory}"), tmp_path / "store")
    assert code == EXIT_CONFIG
    assert "model_type 'acme_tiny'" in result["message"] and "spec.model.trustRemoteCode: true" in result["message"]
    # trusted, the check lets it through to the code, which this directory lacks
    with pytest.raises(ModelDirError, match="holds no .py files"):
        check_model_directory(directory, "file://x", trust_remote_code=True)


def test_the_models_own_tokenizer_pad_bos_and_end_of_turn_ids(model_dir, tmp_path):
    from alignops.workloads.models.loading import load_causal_lm, load_tokenizer, stop_token_ids
    from alignops.workloads.rollout.base import SamplingSettings
    from alignops.workloads.rollout.hf import TransformersEngine

    # a tokenizer with no pad token pads with its EOS (the generic class: Qwen2Tokenizer has a default pad)
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(model_dir / "tokenizer.json", bare)
    settings = json.loads((model_dir / "tokenizer_config.json").read_text())
    settings.pop("pad_token")
    (bare / "tokenizer_config.json").write_text(json.dumps(settings))
    assert load_tokenizer(bare).pad_token == "<|im_end|>"

    tokenizer = load_tokenizer(model_dir, chat_template="{{ messages[0]['content'] }}")
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.bos_token_id is None  # Qwen-style: nothing is prepended
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "hi"  # the override
    model = load_causal_lm(model_dir)
    im_end, end_of_text = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert stop_token_ids(model, tokenizer) == [im_end, end_of_text]
    # generation stops at either id, and a response ends at the first of them
    engine = TransformersEngine(model, tokenizer)
    seen = {}
    generate = model.generate
    model.generate = lambda **kwargs: seen.update(kwargs) or generate(**kwargs)
    prompt = tokenizer(chat_prompt(WORDS[0]), add_special_tokens=False).input_ids
    engine.generate([prompt], SamplingSettings(n=1, max_new_tokens=3, greedy=True), [0])
    assert seen["eos_token_id"] == [im_end, end_of_text]
    assert engine._response_length([7, 9, end_of_text, im_end, 4], ()) == (3, True)
    assert engine._response_length([7, im_end, 9], ()) == (2, True)
    assert engine._response_length([7, 9, 4], ()) == (3, False)
