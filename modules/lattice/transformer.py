"""Lattice's Transformer block (TB) over one event sequence: pre-norm, QK-norm, rotary, untied FFN.

    a = RMSNorm(s)
    q, k, v = split_heads(W_qkv a)                          [B, H, L, d_h] each
    q, k = RoPE(RMSNorm_h(q)), RoPE(RMSNorm_h(k))           QK-norm per head (one weight over d_h,
                                                            shared by the heads), then rotary
    s = s + W_o merge_heads(attention(q, k, v, mask))
    s = s + FFN(RMSNorm(s))                                 FFN = LatticeMLP(d, [ffn_dim, d]), one
                                                            copy per domain group when untied
    s = s * mask                                            padded slots stay zero

QK-norm fixes the length of every head's query and key (up to the learned per-channel gain), so the
attention logits cannot grow with the scale of W_qkv or of the input: the usual guard against
logit growth in deep or bf16 Transformers. The attention mask is ``modules/attention.py``'s rule for
self-attention: real keys plus the query itself, so a padded query never sees a fully masked row.

Legend: B batch, L sequence length, d width, H heads, d_h head dim, G domain groups.
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
from recscale.modules.lattice.layers import RMS_EPS, LatticeMLP, UntiedByDomain


class TransformerBlock(nn.Module):
    """``s [B, L, d] -> [B, L, d]``; see the module docstring.

    Args:
        dim: d.
        num_heads: H (divides d).
        ffn_dim: FFN hidden width.
        qk_norm: RMSNorm on each head's queries and keys.
        rope_base: rotary base (used when ``forward`` gets positions).
        norm: ``SwishNorm`` kind of the FFN.
        bias: Linear biases.
        groups: domain groups G of the FFN (1 = tied).
        backend: attention kernel.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_dim: int,
        qk_norm: bool = True,
        rope_base: float = 10_000.0,
        norm: str = "rms_gate_norm",
        bias: bool = False,
        groups: int = 1,
        backend: AttentionBackend = AttentionBackend.SDPA,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"model.lattice.num_heads: {num_heads} heads do not divide the width {dim}")
        self.num_heads = num_heads
        self.rope_base = rope_base
        self.backend = backend
        self.spec = MaskSpec(self_attention=True)
        head_dim = dim // num_heads
        self.attn_norm = nn.RMSNorm(dim, eps=RMS_EPS)
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.q_norm = nn.RMSNorm(head_dim, eps=RMS_EPS) if qk_norm else None
        self.k_norm = nn.RMSNorm(head_dim, eps=RMS_EPS) if qk_norm else None
        self.out = nn.Linear(dim, dim, bias=bias)
        self.ffn_norm = nn.RMSNorm(dim, eps=RMS_EPS)
        self.ffn = UntiedByDomain(lambda: LatticeMLP(dim, [ffn_dim, dim], norm, bias), groups)

    def queries_keys(
        self, a_BLd: torch.Tensor, positions_BL: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Heads ``[B, H, L, d_h]`` of q, k (QK-normed, rotated) and v from the normed input."""
        q_BLd, k_BLd, v_BLd = self.qkv(a_BLd).chunk(3, dim=-1)
        q, k, v = (split_heads(t, self.num_heads) for t in (q_BLd, k_BLd, v_BLd))
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if positions_BL is not None:
            q, k = rotary(q, positions_BL, self.rope_base), rotary(k, positions_BL, self.rope_base)
        return q, k, v

    def forward(
        self,
        s_BLd: torch.Tensor,
        mask_BL: torch.Tensor,
        positions_BL: torch.Tensor | None = None,
        domain_BG: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One block; ``positions_BL`` None = no rotary encoding; padded slots come out as zeros."""
        q, k, v = self.queries_keys(self.attn_norm(s_BLd), positions_BL)
        o_BHLd = attention(q, k, v, mask_BL, self.spec, self.backend)
        s_BLd = s_BLd + self.out(merge_heads(o_BHLd))
        s_BLd = s_BLd + self.ffn(self.ffn_norm(s_BLd), domain_BG)
        return s_BLd * mask_BL.unsqueeze(-1).to(s_BLd.dtype)

    def flops(self, lengths: Lengths, executed: bool = False) -> FlopCount:
        """Summed over the examples of ``lengths`` (one example per entry), forward and exact backward.

        Model FLOPs count every real event's projections and the pairs among real events; ``executed``
        counts what the attention kernel runs on them instead (SDPA's backward recomputes Q Kᵀ). The
        untied FFN counts all G copies (each runs on every row).
        """
        dim = self.out.in_features
        attn = self_attention_flops(lengths, dim, self.spec, self.backend if executed else None)
        proj = linear(dim, 3 * dim, tokens=lengths.tokens) + linear(dim, dim, tokens=lengths.tokens)
        return proj + attn + self.ffn.flops(tokens=lengths.tokens)
