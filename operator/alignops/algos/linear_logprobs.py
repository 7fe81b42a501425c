"""Token log-probabilities straight from hidden states and the output projection, chunk by chunk over
positions, so that the (N, V) logits never exist whole.

Why: the plain path materialises ``lm_head(h)`` for every position and then a float32 copy for the
log-softmax: at a 151,936-token vocabulary, 8 x 4096 positions, that is 10 GB of bf16 logits plus
20 GB of float32, several times the model. Here a chunk of C positions is projected, reduced to its
C log-probs (and entropies) in float32, and dropped; the backward recomputes each chunk's logits
(the same trade Liger Kernel's fused linear cross-entropy makes on CUDA, here in plain PyTorch so it
runs on every device).

Math, for one position with hidden state h (H,), output matrix W (V, H), bias b, temperature T and
label y: ``z = (W h + b) / T``, ``lse = logsumexp(z)``, ``logp = z_y - lse``, ``H = lse - sum_v p_v z_v``
with ``p = softmax(z)``. Backward of ``logp`` with upstream gradient g: ``dz = g (onehot(y) - p)``,
``dh = W^T dz / T``, ``dW = dz h^T / T``, ``db = dz / T``. The entropy carries no gradient.

Precision: the projection runs in the autocast dtype when autocast is on (as ``lm_head`` would),
everything after it in float32; the gradient of W is accumulated over chunks in W's own dtype
(float32 master weights).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .logprobs import IGNORE_INDEX

__all__ = ["DEFAULT_CHUNK_ELEMENTS", "linear_token_logprobs", "chunk_rows"]

DEFAULT_CHUNK_ELEMENTS = 1 << 25
"""Logit elements per chunk (C x V): 128 MB of float32, about 220 positions at a 151,936 vocabulary."""


def chunk_rows(vocab_size: int, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> int:
    """Positions per chunk for a vocabulary of ``vocab_size``."""
    return max(1, chunk_elements // max(1, vocab_size))


def _compute_dtype(device: torch.device, weight: Tensor) -> torch.dtype:
    """The projection's dtype: autocast's on this device when it is on, else the weight's."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return weight.dtype


def _reduce_dtype(dtype: torch.dtype) -> torch.dtype:
    # float32 after a bf16/fp16 projection; float64 stays float64 (gradient checks)
    return torch.float64 if dtype == torch.float64 else torch.float32


def _chunk_logits(h: Tensor, weight: Tensor, bias: Optional[Tensor], inv_t: float, dtype: torch.dtype) -> Tensor:
    """(C, V) ``(h W^T + b) / T`` with the matmul in ``dtype``, upcast to float32 (float64 stays)."""
    # F.linear, as lm_head computes it (one rounding of h W^T + b in a low-precision dtype)
    z = torch.nn.functional.linear(h.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype))
    z = z.to(_reduce_dtype(dtype))
    return z * inv_t if inv_t != 1.0 else z


class _LinearLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, inv_t, rows, with_entropy):
        dtype = _compute_dtype(hidden.device, weight)
        n = hidden.shape[0]
        logps = torch.empty(n, dtype=_reduce_dtype(dtype), device=hidden.device)
        lse_all = torch.empty_like(logps)
        entropy = torch.empty_like(logps) if with_entropy else None
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, n, rows):
                stop = min(n, start + rows)
                z = _chunk_logits(hidden[start:stop], weight, bias, inv_t, dtype)
                lse = torch.logsumexp(z, dim=-1)
                lse_all[start:stop] = lse
                logps[start:stop] = z.gather(-1, labels[start:stop, None]).squeeze(-1) - lse
                if with_entropy:
                    p = torch.exp(z - lse[:, None])
                    # -inf logits have p = 0 and must add 0, not 0 * -inf
                    entropy[start:stop] = lse - torch.where(p > 0, p * z, torch.zeros_like(z)).sum(-1)
        ctx.save_for_backward(hidden, weight, bias, labels, lse_all)
        ctx.inv_t, ctx.rows, ctx.dtype = inv_t, rows, dtype
        if entropy is None:
            return logps
        ctx.mark_non_differentiable(entropy)
        return logps, entropy

    @staticmethod
    def backward(ctx, grad_logps, grad_entropy=None):
        hidden, weight, bias, labels, lse_all = ctx.saved_tensors
        inv_t, rows, dtype = ctx.inv_t, ctx.rows, ctx.dtype
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros_like(bias) if need_b and bias is not None else None
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], rows):
                stop = min(hidden.shape[0], start + rows)
                h = hidden[start:stop]
                z = _chunk_logits(h, weight, bias, inv_t, dtype)
                g = grad_logps[start:stop].to(z.dtype)
                # d logp / dz = onehot(y) - softmax(z), scaled by g and by 1/T for z's own scaling
                dz = torch.exp(z - lse_all[start:stop, None]).mul_(-g[:, None])
                dz.scatter_add_(-1, labels[start:stop, None], g[:, None])
                if inv_t != 1.0:
                    dz.mul_(inv_t)
                dz_c = dz.to(dtype)
                if grad_h is not None:
                    grad_h[start:stop] = (dz_c @ weight.to(dtype)).to(hidden.dtype)
                if grad_w is not None:
                    grad_w += (dz_c.t() @ h.to(dtype)).to(weight.dtype)
                if grad_b is not None:
                    grad_b += dz.sum(0).to(bias.dtype)
        return grad_h, grad_w, grad_b, None, None, None, None


def linear_token_logprobs(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    bias: Optional[Tensor] = None,
    *,
    temperature: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
    chunk_size: Optional[int] = None,
    with_entropy: bool = False,
) -> Tuple[Tensor, Optional[Tensor]]:
    """``log softmax((hidden W^T + b) / T)[label]`` at every position, without the full logits.

    Args:
        hidden: (B, T, H) or (N, H) final hidden states (after the model's last norm), aligned with
            ``labels`` (for a causal LM: ``hidden[:, :-1]`` with ``labels[:, 1:]``).
        weight: (V, H) the output projection (``lm_head.weight``; tied embeddings work as is).
        labels: (B, T) or (N,) token ids; ``ignore_index`` marks positions without a label.
        bias: optional (V,).
        temperature: T > 0, the sampling temperature whose distribution is scored.
        chunk_size: positions per chunk (default: ``chunk_rows(V)``, about 128 MB of float32 logits).
        with_entropy: also return each position's entropy (no gradient).

    Returns:
        ``(logps, entropy)`` shaped like ``labels``, float32 (float64 for float64 inputs); logps is 0 (and entropy 0) where
        ``labels == ignore_index``; entropy is None unless asked for. Equal, up to float rounding,
        to ``token_logprobs(linear(hidden, W, b) / T, labels)`` in values and in gradients (w.r.t.
        hidden, W and b).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    shape = labels.shape
    if hidden.shape[:-1] != shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and labels {tuple(shape)} disagree")
    flat_h = hidden.reshape(-1, hidden.shape[-1])
    flat_labels = labels.reshape(-1)
    valid = flat_labels != ignore_index
    safe = torch.where(valid, flat_labels, torch.zeros_like(flat_labels))
    rows = chunk_size or chunk_rows(weight.shape[0])
    if flat_h.shape[0] == 0:
        zeros = torch.zeros(shape, dtype=_reduce_dtype(weight.dtype), device=hidden.device)
        return zeros + flat_h.sum() * 0.0, (zeros.clone() if with_entropy else None)
    out = _LinearLogprobs.apply(flat_h, weight, bias, safe, 1.0 / temperature, rows, with_entropy)
    logps, entropy = out if with_entropy else (out, None)
    logps = torch.where(valid, logps, torch.zeros_like(logps)).view(shape)
    if entropy is not None:
        entropy = torch.where(valid, entropy, torch.zeros_like(entropy)).view(shape)
    return logps, entropy
