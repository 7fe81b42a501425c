"""The fused/chunked log-prob path of real Hugging Face causal LMs (tiny llama and qwen2 built in
code) equals ``model(...).logits`` in values and gradients; the CUDA branch's wiring to Liger's
kernel, checked on the CPU against a stand-in with Liger's signature and semantics; activation
checkpointing keeps the gradients; precision ``bf16`` autocasts on the CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from alignops.algos import masked_lm_loss, next_token_logprobs
from alignops.workloads.models import token_logps
from alignops.workloads.models.checkpointing import enable_gradient_checkpointing
from alignops.workloads.models.loading import autocast_dtype
from alignops.workloads.models.token_logps import causal_token_logprobs, sft_loss, split_head
from suite import peak_cpu_bytes

SIZES = dict(vocab_size=97, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)


def _model(kind: str):
    torch.manual_seed(0)
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(**SIZES, tie_word_embeddings=True))
    if kind == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**SIZES, tie_word_embeddings=False))
    # dropout off: two forward passes must see the same network
    return GPT2LMHeadModel(GPT2Config(vocab_size=97, n_embd=16, n_layer=2, n_head=4, n_positions=64, resid_pdrop=0.0,
                                      embd_pdrop=0.0, attn_pdrop=0.0))


def _batch():
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(4, 97, (3, 11), generator=generator)
    attention = torch.ones_like(ids)
    attention[1, 8:] = 0  # right padding
    labels = ids.clone()
    labels[:, :4] = -100  # the prompt
    labels[1, 8:] = -100
    return ids, attention, labels


def _grads(model, loss):
    return torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
def test_equals_the_logits_path_in_values_and_gradients(kind):
    model = _model(kind)
    ids, attention, labels = _batch()
    assert (split_head(model) is None) == (kind == "gpt2")  # gpt2: not a known plain head, the logits path
    logits = model(input_ids=ids, attention_mask=attention).logits
    plain_loss = masked_lm_loss(logits, labels)
    plain_grads = _grads(model, plain_loss)
    loss = sft_loss(model, ids, attention, labels)
    assert_close(loss, plain_loss, atol=1e-6, rtol=1e-6)
    for got, want in zip(_grads(model, loss), plain_grads):
        assert_close(got, want, atol=1e-6, rtol=1e-5)

    plain_logps, mask = next_token_logprobs(model(input_ids=ids, attention_mask=attention).logits / 0.7, labels)
    logps, entropy = causal_token_logprobs(model, ids, attention, labels, temperature=0.7, with_entropy=True)
    assert_close(logps, plain_logps, atol=1e-5, rtol=1e-5)
    assert entropy.shape == logps.shape and bool((entropy[mask] > 0).all())


class LigerStandIn:
    """``liger_fused_linear_cross_entropy``'s signature and semantics (per-token -log p with
    ``reduction="none"``, 0 at ignore_index; their sum with ``"sum"``), in plain PyTorch."""

    def __init__(self):
        self.calls = []

    def __call__(self, input, weight, target, bias=None, ignore_index=-100, reduction="mean", accum_dtype=None):
        self.calls.append(reduction)
        assert input.dim() == 2 and target.dim() == 1 and accum_dtype == torch.float32
        nll = F.cross_entropy(F.linear(input, weight, bias).float(), target, ignore_index=ignore_index, reduction="none")
        return nll if reduction == "none" else nll.sum()


def test_the_cuda_branch_feeds_liger_what_it_expects(monkeypatch):
    model = _model("llama")
    ids, attention, labels = _batch()
    stand_in = LigerStandIn()
    monkeypatch.setattr(token_logps, "fused_kernel", lambda device: stand_in)
    plain = masked_lm_loss(model(input_ids=ids, attention_mask=attention).logits, labels)
    assert_close(sft_loss(model, ids, attention, labels), plain, atol=1e-6, rtol=1e-6)
    plain_logps, _ = next_token_logprobs(model(input_ids=ids, attention_mask=attention).logits / 0.5, labels)
    logps, entropy = causal_token_logprobs(model, ids, attention, labels, temperature=0.5)
    assert_close(logps, plain_logps, atol=1e-5, rtol=1e-5) and entropy is None
    weights = torch.tensor([1.0, 0.5, 2.0])  # C-RLFT weights need per-token log-probs
    assert_close(sft_loss(model, ids, attention, labels, weights), masked_lm_loss(
        model(input_ids=ids, attention_mask=attention).logits, labels, weights), atol=1e-6, rtol=1e-6)
    assert stand_in.calls == ["sum", "none", "none"]
    # entropies are the PyTorch path's: the kernel is not asked
    causal_token_logprobs(model, ids, attention, labels, with_entropy=True)
    assert stand_in.calls == ["sum", "none", "none"]


def test_a_vocabulary_heavy_model_trains_in_a_fraction_of_the_memory(monkeypatch):
    # a tiny qwen2 with a 16,000-token vocabulary: 2 x 64 positions make 8 MB of float32 logits
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**{**SIZES, "vocab_size": 16_000}))
    ids = torch.randint(4, 16_000, (2, 64))
    attention, labels = torch.ones_like(ids), ids.clone()
    monkeypatch.setattr(token_logps, "CHUNK_ELEMENTS", 16 * 16_000)  # 16 positions per chunk

    def plain():
        masked_lm_loss(model(input_ids=ids, attention_mask=attention).logits, labels).backward()

    def chunked():
        sft_loss(model, ids, attention, labels).backward()

    plain_peak, chunked_peak = peak_cpu_bytes(plain), peak_cpu_bytes(chunked)
    assert chunked_peak < plain_peak / 2, (chunked_peak, plain_peak)


def test_no_fused_kernel_off_cuda():
    assert token_logps.fused_kernel(torch.device("cpu")) is None


def test_gradient_checkpointing_keeps_the_gradients():
    model, checkpointed = _model("qwen2"), _model("qwen2")
    enable_gradient_checkpointing(checkpointed)
    assert checkpointed.is_gradient_checkpointing and not checkpointed.config.use_cache
    ids, attention, labels = _batch()
    for a, b in zip(_grads(model, sft_loss(model, ids, attention, labels)),
                    _grads(checkpointed, sft_loss(checkpointed, ids, attention, labels))):
        assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_precision_bf16_autocasts_on_the_cpu_and_auto_does_not():
    cpu = torch.device("cpu")
    assert autocast_dtype("bf16", cpu) == torch.bfloat16
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("fp32", cpu) is None
    model = _model("llama")
    ids, attention, labels = _batch()
    with torch.autocast("cpu", dtype=autocast_dtype("bf16", cpu)):
        loss = sft_loss(model, ids, attention, labels)
    assert loss.dtype == torch.float32  # the loss is reduced in float32
    assert abs(float(loss) - float(sft_loss(model, ids, attention, labels))) > 1e-6  # bf16 numerics ran
