"""GDPA — generalized dot-product attention: InterFormer's personalized FFN written as attention.

The sequence tokens are the queries; keys and values are generated per example from the
non-sequence summary X_sum, so ``act(Q Kᵀ / τ) · scale · V`` is a two-layer FFN over every event
whose weights depend on the example (a hyper-network). Unlike softmax attention, rows are not
normalised: the element-wise activation replaces softmax and ``scale`` multiplies *after* it (the
semantics of Meta's GDPA kernel). Each head can be seen as its own FFN of hidden
width M (the K/V tokens).

Legend: B batch, L sequence length, E event width d_e, H heads, d head dim (E / H), N X_sum tokens,
M K/V tokens, D non-sequence token width.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from recscale.modules.attention import merge_heads, split_heads
from recscale.modules.flops import FlopCount, Lengths, linear, matmul

GDPA_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "relu": F.relu,
    "relu2": lambda x: F.relu(x).square(),
    "leaky_relu": F.leaky_relu,
    "hardswish": F.hardswish,
    "tanh": torch.tanh,
    "identity": lambda x: x,
}
"""The element-wise activations Meta's GDPA kernel supports."""


def gdpa_temperature(kind: str, max_length: int, head_dim: int) -> float:
    """τ that divides ``Q Kᵀ``: the max sequence length (reported best), sqrt(head dim), or 1."""
    if kind == "max_length":
        return float(max_length)
    if kind == "sqrt_dim":
        return math.sqrt(head_dim)
    if kind == "one":
        return 1.0
    raise ValueError(f"model.kunlun.gdpa_temperature: unknown {kind!r}; expected max_length, sqrt_dim or one")


def gdpa_reference(
    q_BHLd: torch.Tensor,
    k_BHMd: torch.Tensor,
    v_BHMd: torch.Tensor,
    activation: str,
    temperature: float,
    scale: float,
) -> torch.Tensor:
    """``(act(Q Kᵀ / τ) * scale) V`` per head: ``[B, H, L, d]`` (no masking: rows are independent)."""
    scores_BHLM = torch.matmul(q_BHLd, k_BHMd.transpose(-1, -2)) / temperature
    return torch.matmul(GDPA_ACTIVATIONS[activation](scores_BHLM) * scale, v_BHMd)


class GDPA(nn.Module):
    """Multi-head GDPA block with residual and norm: ``s [B, L, E], x_sum [B, N, D] -> s [B, L, E]``.

    ``post`` norm: ``LN(s + W_o GDPA(s, K(x_sum), V(x_sum)))``; ``pre``: ``s + W_o GDPA(LN(s), ...)``.
    Queries are the event tokens themselves (no query projection, as in InterFormer's PFFN ``f(X_sum) s``);
    K and V are linear maps of X_sum tokens (after an optional token mixing N -> M).

    Args:
        dim: event width E.
        context_dim: X_sum token width D.
        num_context_tokens: N.
        num_kv_tokens: M (0 or N = no token mixing).
        num_heads: H (divides E).
        activation: key of ``GDPA_ACTIVATIONS``.
        temperature: τ.
        scale: multiplier after the activation.
        norm: ``post`` or ``pre``.
    """

    def __init__(
        self,
        dim: int,
        context_dim: int,
        num_context_tokens: int,
        num_kv_tokens: int,
        num_heads: int,
        activation: str,
        temperature: float,
        scale: float = 1.0,
        norm: str = "post",
    ) -> None:
        super().__init__()
        if activation not in GDPA_ACTIVATIONS:
            raise ValueError(f"model.kunlun.gdpa_activation: unknown {activation!r}; known: {sorted(GDPA_ACTIVATIONS)}")
        self.num_heads = num_heads
        self.activation = activation
        self.temperature = temperature
        self.scale = scale
        self.norm_position = norm
        self.num_context_tokens = num_context_tokens
        self.num_kv_tokens = num_kv_tokens or num_context_tokens
        self.mix = (
            nn.Linear(num_context_tokens, self.num_kv_tokens) if self.num_kv_tokens != num_context_tokens else None
        )
        self.k_proj = nn.Linear(context_dim, dim)
        self.v_proj = nn.Linear(context_dim, dim)
        self.out = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, s_BLE: torch.Tensor, xsum_BND: torch.Tensor, mask_BL: torch.Tensor) -> torch.Tensor:
        """One GDPA block; padded positions come out as zeros."""
        c_BMD = xsum_BND if self.mix is None else self.mix(xsum_BND.transpose(1, 2)).transpose(1, 2)
        k_BHMd = split_heads(self.k_proj(c_BMD), self.num_heads)
        v_BHMd = split_heads(self.v_proj(c_BMD), self.num_heads)
        q_BLE = self.norm(s_BLE) if self.norm_position == "pre" else s_BLE
        o_BHLd = gdpa_reference(
            split_heads(q_BLE, self.num_heads), k_BHMd, v_BHMd, self.activation, self.temperature, self.scale
        )
        y_BLE = s_BLE + self.out(merge_heads(o_BHLd))
        if self.norm_position == "post":
            y_BLE = self.norm(y_BLE)
        return y_BLE * mask_BL.unsqueeze(-1).to(y_BLE.dtype)

    def flops(self, seq_len: int | Lengths) -> FlopCount:
        """FLOPs at sequence length ``seq_len`` (one example), or summed over a batch's real ``Lengths``.

        K and V (and the token mixing) are made from X_sum once per example whatever its length; the
        "attention" (``Q Kᵀ``, ``act(.) V``) and ``W_o`` run on the real events only.
        """
        dim, ctx = self.out.in_features, self.k_proj.in_features
        m, n = self.num_kv_tokens, Lengths.of(seq_len)
        per_example = linear(ctx, dim, tokens=m).scaled(2)  # K and V
        if self.mix is not None:
            per_example = per_example + linear(self.num_context_tokens, m, tokens=ctx)
        per_token = matmul(1, dim, m) + matmul(1, m, dim)  # Q Kᵀ over heads (H * [1, d] @ [d, M]), act(.) V
        return per_example.scaled(n.examples) + per_token.scaled(n.tokens) + linear(dim, dim, tokens=n.tokens)
