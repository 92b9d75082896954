"""Sliding-window self-attention over an event sequence, with optional rotary (RoPE / ROTE) encoding.

Every event attends to the real events within ``window`` positions (``|i - j| <= w``, or only older
ones when causal); ``window = 0`` is full self-attention. Block: ``LN(s + W_o MHA(s))`` (post norm)
or ``s + W_o MHA(LN(s))`` (pre norm). Rotary positions are event indices (``position``) or
log-scaled time gaps to the newest event (``time``, ROTE).

Legend: B batch, L sequence length, E event width, H heads, d head dim.
"""

from __future__ import annotations

import torch
from torch import nn

from recscale.modules.attention import (
    AttentionBackend,
    MaskSpec,
    attention,
    merge_heads,
    rotary,
    self_attention_flops,
    split_heads,
)
from recscale.modules.flops import FlopCount, Lengths, linear


class SlidingWindowAttention(nn.Module):
    """Sliding-window multi-head self-attention block: ``s [B, L, E] -> s [B, L, E]``.

    Args:
        dim: E.
        num_heads: H.
        window: half width w (0 = full attention).
        causal: older events only.
        rope: apply rotary encoding to queries and keys with the positions given to ``forward``.
        rope_base: rotary base.
        norm: ``post`` or ``pre``.
        backend: attention kernel.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: int = 0,
        causal: bool = False,
        rope: bool = False,
        rope_base: float = 10_000.0,
        norm: str = "post",
        backend: AttentionBackend = AttentionBackend.SDPA,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.spec = MaskSpec(window=window, causal=causal, self_attention=True)
        self.rope = rope
        self.rope_base = rope_base
        self.norm_position = norm
        self.backend = backend
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(
        self, s_BLE: torch.Tensor, mask_BL: torch.Tensor, positions_BL: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One block; padded positions come out as zeros."""
        x_BLE = self.norm(s_BLE) if self.norm_position == "pre" else s_BLE
        q_BLE, k_BLE, v_BLE = self.qkv(x_BLE).chunk(3, dim=-1)
        q_BHLd, k_BHLd = split_heads(q_BLE, self.num_heads), split_heads(k_BLE, self.num_heads)
        if self.rope:
            assert positions_BL is not None, "rotary encoding needs positions"
            q_BHLd = rotary(q_BHLd, positions_BL, self.rope_base)
            k_BHLd = rotary(k_BHLd, positions_BL, self.rope_base)
        o_BHLd = attention(q_BHLd, k_BHLd, split_heads(v_BLE, self.num_heads), mask_BL, self.spec, self.backend)
        y_BLE = s_BLE + self.out(merge_heads(o_BHLd))
        if self.norm_position == "post":
            y_BLE = self.norm(y_BLE)
        return y_BLE * mask_BL.unsqueeze(-1).to(y_BLE.dtype)

    def flops(self, seq_len: int | Lengths, executed: bool = False) -> FlopCount:
        """FLOPs at sequence length ``seq_len`` (one example), or summed over a batch's real ``Lengths``.

        Model FLOPs count only the window's pairs among an example's real events; ``executed`` counts
        what the configured kernel runs on them (every pair for REFERENCE / SDPA, the touched tiles
        for FLEX).
        """
        dim, n = self.out.in_features, Lengths.of(seq_len)
        attn = self_attention_flops(n, dim, self.spec, self.backend if executed else None)
        return linear(dim, 3 * dim, tokens=n.tokens) + attn + linear(dim, dim, tokens=n.tokens)
