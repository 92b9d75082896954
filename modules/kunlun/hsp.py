"""Hierarchical Seed Pooling: learnable seeds attend over a sequence, SumKronLinear compresses them.

Level 1: an over-complete set of S learnable seeds reads the sequence by multi-head attention
(seeds are queries, the events keys and values). Level 2: ``SumKronLinear`` maps the S seed outputs
to T summary tokens of the interaction width with a sum of k Kronecker-structured linear maps,
``Y = Σ_i Z_iᵀ H W_i``, i.e. k * (S * T + E * D) parameters instead of S * E * T * D.

Legend: B batch, L sequence length, E event width, H heads, d head dim, S seeds, T summary tokens,
D interaction token width, K Kronecker terms.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from recscale.modules.attention import (
    AttentionBackend,
    MaskSpec,
    attention,
    cross_attention_flops,
    merge_heads,
    nonempty_keys,
    split_heads,
)
from recscale.modules.flops import FlopCount, Lengths, linear, matmul


class SumKronLinear(nn.Module):
    """``Y = Σ_{i<K} Z_iᵀ X W_i + b``: ``[B, S, E] -> [B, T, D]`` with ``Z_i [S, T]``, ``W_i [E, D]``.

    Computed as ``(Z_iᵀ X) W_i`` (T < S, so the token contraction goes first).

    Args:
        in_tokens: S.
        out_tokens: T.
        in_dim: E.
        out_dim: D.
        num_terms: K.
    """

    def __init__(self, in_tokens: int, out_tokens: int, in_dim: int, out_dim: int, num_terms: int) -> None:
        super().__init__()
        self.z_KST = nn.Parameter(torch.empty(num_terms, in_tokens, out_tokens))
        self.w_KED = nn.Parameter(torch.empty(num_terms, in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        nn.init.uniform_(self.z_KST, -1.0 / math.sqrt(in_tokens), 1.0 / math.sqrt(in_tokens))
        bound = 1.0 / math.sqrt(num_terms * in_dim)
        nn.init.uniform_(self.w_KED, -bound, bound)

    def forward(self, x_BSE: torch.Tensor) -> torch.Tensor:
        """``[B, S, E] -> [B, T, D]``."""
        t_BKTE = torch.einsum("bse,kst->bkte", x_BSE, self.z_KST)
        return torch.einsum("bkte,ked->btd", t_BKTE, self.w_KED) + self.bias

    def flops(self) -> FlopCount:
        """Per-example FLOPs (forward and exact backward; the input needs a gradient)."""
        k, s, t = self.z_KST.shape
        e, d = self.w_KED.shape[1:]
        return matmul(t, s, e).scaled(k) + matmul(t, k * e, d)


class HierarchicalSeedPooling(nn.Module):
    """HSP: ``s [B, L, E] (+ mask) -> summary [B, T, D]``.

    Seed attention ``H = W_o MHA(LN(E_seed), W_k s, W_v s)`` over the real events (an event-free
    example reads one zero slot), then ``SumKronLinear``. The seeds are learned directly as queries
    (a query projection of a parameter would only re-parameterise it).

    Args:
        dim: event width E.
        out_dim: summary token width D.
        num_seeds: S.
        num_tokens: T.
        num_heads: H.
        num_terms: K of SumKronLinear.
        backend: attention kernel.
    """

    def __init__(
        self,
        dim: int,
        out_dim: int,
        num_seeds: int,
        num_tokens: int,
        num_heads: int,
        num_terms: int,
        backend: AttentionBackend = AttentionBackend.SDPA,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.backend = backend
        self.seeds_SE = nn.Parameter(torch.randn(num_seeds, dim) * 0.02)
        self.seed_norm = nn.LayerNorm(dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.kron = SumKronLinear(num_seeds, num_tokens, dim, out_dim, num_terms)

    def forward(self, s_BLE: torch.Tensor, mask_BL: torch.Tensor) -> torch.Tensor:
        """Summary tokens ``[B, T, D]``."""
        b = s_BLE.shape[0]
        s_BLE = s_BLE * mask_BL.unsqueeze(-1).to(s_BLE.dtype)  # an event-free example reads a zero slot
        q_BHSd = split_heads(self.seed_norm(self.seeds_SE).unsqueeze(0), self.num_heads).expand(b, -1, -1, -1)
        k_BHLd = split_heads(self.k_proj(s_BLE), self.num_heads)
        v_BHLd = split_heads(self.v_proj(s_BLE), self.num_heads)
        o_BHSd = attention(q_BHSd, k_BHLd, v_BHLd, nonempty_keys(mask_BL), MaskSpec(), self.backend)
        return self.kron(self.out(merge_heads(o_BHSd)))

    def flops(self, seq_len: int | Lengths, executed: bool = False) -> FlopCount:
        """FLOPs at sequence length ``seq_len`` (one example), or summed over a batch's real ``Lengths``.

        The seeds attend an example's real events only (none for an event-free example: the padded
        kernel's zero slot is padding); the seed-side maps (``W_o``, SumKronLinear) run once per
        example whatever its length. ``executed`` counts what the kernel runs on the real events.
        """
        dim, seeds, n = self.out.in_features, self.seeds_SE.shape[0], Lengths.of(seq_len)
        attn = cross_attention_flops(seeds, n, dim, self.backend if executed else None)
        kv = linear(dim, dim, tokens=n.tokens).scaled(2)
        per_example = linear(dim, dim, tokens=seeds) + self.kron.flops()
        return kv + attn + per_example.scaled(n.examples)
