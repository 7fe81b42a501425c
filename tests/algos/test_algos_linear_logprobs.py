"""The chunked linear log-prob path (hidden states x output matrix -> token log-probs, never the
whole logits) against the plain one: hand-computed values, equality in values and gradients for
every chunking, float64 gradcheck, bf16 autocast, and a lower peak memory."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from alignops.algos import entropy_from_logits, lm_loss_from_logprobs, masked_lm_loss, token_logprobs
from alignops.algos.linear_logprobs import chunk_rows, linear_token_logprobs
from suite import peak_cpu_bytes


def test_hand_computed_logprob_and_entropy():
    # one position, h = [1], W = [[0], [ln 2]]: z = [0, ln 2], softmax = [1/3, 2/3]
    # logp(1) = ln(2/3); H = -(1/3 ln 1/3 + 2/3 ln 2/3) = ln 3 - (2/3) ln 2
    hidden = torch.tensor([[1.0]])
    weight = torch.tensor([[0.0], [math.log(2)]])
    logps, entropy = linear_token_logprobs(hidden, weight, torch.tensor([1]), with_entropy=True)
    assert_close(logps, torch.tensor([math.log(2 / 3)]))
    assert_close(entropy, torch.tensor([math.log(3) - 2 / 3 * math.log(2)]))
    # temperature 1/2 doubles the logits: z = [0, 2 ln 2], softmax = [1/5, 4/5]
    logps, _ = linear_token_logprobs(hidden, weight, torch.tensor([1]), temperature=0.5)
    assert_close(logps, torch.tensor([math.log(4 / 5)]))


def _case(dtype=torch.float32, vocab=50):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 7, 16, dtype=dtype, generator=generator).requires_grad_(True)
    weight = torch.randn(vocab, 16, dtype=dtype, generator=generator).requires_grad_(True)
    bias = torch.randn(vocab, dtype=dtype, generator=generator).requires_grad_(True)
    labels = torch.randint(0, vocab, (3, 7), generator=generator)
    labels[0, :3] = -100  # a prompt
    labels[2, 5:] = -100  # padding
    upstream = torch.randn(3, 7, dtype=dtype, generator=generator)
    return hidden, weight, bias, labels, upstream


@pytest.mark.parametrize("chunk_size", [1, 4, 21, None])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_equals_the_plain_path_in_values_and_gradients(chunk_size, temperature):
    hidden, weight, bias, labels, upstream = _case()
    logits = F.linear(hidden, weight, bias) / temperature
    plain = token_logprobs(logits, labels)
    plain_entropy = entropy_from_logits(logits.detach())
    plain_grads = torch.autograd.grad((plain * upstream).sum(), (hidden, weight, bias))

    ours, entropy = linear_token_logprobs(hidden, weight, labels, bias, temperature=temperature,
                                          chunk_size=chunk_size, with_entropy=True)
    grads = torch.autograd.grad((ours * upstream).sum(), (hidden, weight, bias))
    assert_close(ours, plain, atol=1e-5, rtol=1e-5)
    valid = labels != -100
    assert_close(entropy[valid], plain_entropy[valid], atol=1e-4, rtol=1e-4)  # p z summed in another order
    assert torch.all(ours[~valid] == 0) and torch.all(entropy[~valid] == 0)
    for got, want in zip(grads, plain_grads):
        assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_float64_gradients_pass_gradcheck():
    hidden, weight, bias, labels, _ = (t.detach()[:2, :3, :4].clone() if t.dim() == 3 else t for t in _case(torch.float64))
    hidden = hidden.requires_grad_(True)
    weight = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(6, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[0, 5, -100], [2, -100, 1]])
    assert torch.autograd.gradcheck(
        lambda h, w, b: linear_token_logprobs(h, w, labels, b, temperature=0.5, chunk_size=2)[0], (hidden, weight, bias))


def test_sft_loss_from_logprobs_equals_masked_lm_loss():
    hidden, weight, _, labels, _ = _case()
    weights = torch.tensor([1.0, 0.1, 2.0])
    logits = F.linear(hidden, weight)
    plain = masked_lm_loss(logits, labels, weights)
    logps, _ = linear_token_logprobs(hidden[:, :-1], weight, labels[:, 1:], chunk_size=5)
    assert_close(lm_loss_from_logprobs(logps, labels[:, 1:] != -100, weights), plain)


def test_bf16_autocast_projects_in_bf16_and_reduces_in_float32():
    hidden, weight, bias, labels, _ = _case()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = token_logprobs(F.linear(hidden, weight, bias), labels)  # lm_head's bf16 logits
        ours, _ = linear_token_logprobs(hidden, weight, labels, bias, chunk_size=4)
    assert ours.dtype == torch.float32
    assert_close(ours, plain, atol=1e-6, rtol=0)  # the same bf16 logits, the same float32 reduction
    exact = token_logprobs(F.linear(hidden, weight, bias), labels)
    assert (ours - exact).abs().max() > 1e-4  # bf16 rounding did happen
    ours.sum().backward()
    assert weight.grad.dtype == torch.float32 and hidden.grad.dtype == torch.float32


def test_peak_memory_is_a_fraction_of_the_plain_path():
    # vocabulary-heavy: 2 x 64 positions x 16,000 tokens = 8 MB of float32 logits per copy
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 64, 16, generator=generator)
    weight = torch.randn(16_000, 16, generator=generator, requires_grad=True)
    labels = torch.randint(0, 16_000, (2, 64), generator=generator)

    def plain():
        token_logprobs(F.linear(hidden.requires_grad_(True), weight), labels).sum().backward()

    def chunked():
        linear_token_logprobs(hidden.requires_grad_(True), weight, labels, chunk_size=16)[0].sum().backward()

    logits_bytes = 2 * 64 * 16_000 * 4
    plain_peak, chunked_peak = peak_cpu_bytes(plain), peak_cpu_bytes(chunked)
    assert plain_peak > 2 * logits_bytes  # logits, their float32 log-softmax row, and the gradient
    assert chunked_peak < plain_peak / 3
    assert chunked_peak < logits_bytes  # never the whole logits


def test_chunk_rows_fits_the_budget():
    assert chunk_rows(151_936) == (1 << 25) // 151_936
    assert chunk_rows(10**9) == 1
