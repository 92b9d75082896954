"""Gated cross-attention (GCA) for cross-domain sequences, with the orthogonality diagnostic.

Domain A's sequence X queries domain B's sequence Y (keys and values); the cross-attention output
X' is added to X through a learnable gate and optionally normalised (the paper's form, with our configurable gate):

    X' = W_o MHA(W_q X, W_k Y, W_v Y)          (padding of Y masked; an empty Y reads one zero slot)
    g  = act(alpha)                      (``scalar``)
    g  = act(W_g [X ‖ X'] + b_g)         (``data``: element-wise, data-dependent)
    out = LN(X + g * X')                 (LN optional; act = sigmoid or tanh)

Diagnostic (the paper's orthogonality measure): mean over real query tokens of |cos(X_t, X'_t)| between the block's
query input X and the cross-attention output X' (before the gate). Low values mean X' carries
information orthogonal to X ("orthogonal alignment"). It is computed without gradient.

Legend: B batch, Q query (domain A) length, K key (domain B) length, D width, H heads, d head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recscale.modules.attention import (
    AttentionBackend,
    MaskSpec,
    attention,
    cross_attention_flops,
    merge_heads,
    nonempty_keys,
    self_attention_flops,
    split_heads,
)
from recscale.modules.flops import FlopCount, Lengths, linear


def masked_abs_cos(x_BQD: torch.Tensor, y_BQD: torch.Tensor, mask_BQ: torch.Tensor) -> torch.Tensor:
    """Mean |cos(x_t, y_t)| over the real tokens of the batch (a scalar; 0 when there are none)."""
    with torch.no_grad():
        cos_BQ = F.cosine_similarity(x_BQD.float(), y_BQD.float(), dim=-1, eps=1e-8).abs()
        weight_BQ = mask_BQ.float()
        return (cos_BQ * weight_BQ).sum() / weight_BQ.sum().clamp(min=1.0)


class GatedCrossAttention(nn.Module):
    """One GCA block: ``X [B, Q, D], Y [B, K, D] -> (out [B, Q, D], mean |cos(X, X')|)``.

    Args:
        dim: D.
        num_heads: H.
        gate: ``scalar`` or ``data``.
        gate_activation: ``sigmoid`` or ``tanh``.
        gate_init: initial alpha (scalar) or gate bias (data), before the activation.
        layer_norm: LayerNorm after the gated residual.
        backend: attention kernel.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        gate: str = "scalar",
        gate_activation: str = "sigmoid",
        gate_init: float = 0.0,
        layer_norm: bool = True,
        backend: AttentionBackend = AttentionBackend.SDPA,
    ) -> None:
        super().__init__()
        if gate not in ("scalar", "data"):
            raise ValueError(f"model.gca.gate: unknown {gate!r}; expected scalar or data")
        if gate_activation not in ("sigmoid", "tanh"):
            raise ValueError(f"model.gca.gate_activation: unknown {gate_activation!r}; expected sigmoid or tanh")
        self.num_heads = num_heads
        self.backend = backend
        self.gate_kind = gate
        self.act = torch.sigmoid if gate_activation == "sigmoid" else torch.tanh
        self.q_proj = nn.Linear(dim, dim)
        self.kv_proj = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        if gate == "scalar":
            self.alpha = nn.Parameter(torch.tensor(float(gate_init)))
            self.gate = None
        else:
            self.gate = nn.Linear(2 * dim, dim)
            nn.init.constant_(self.gate.bias, gate_init)
        self.norm = nn.LayerNorm(dim) if layer_norm else None

    def forward(
        self, x_BQD: torch.Tensor, x_mask_BQ: torch.Tensor, y_BKD: torch.Tensor, y_mask_BK: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gated cross-attention of X over Y; padded query positions come out as zeros."""
        q_BHQd = split_heads(self.q_proj(x_BQD), self.num_heads)
        y_BKD = y_BKD * y_mask_BK.unsqueeze(-1).to(
            y_BKD.dtype
        )  # an empty Y reads a zero slot, whatever the caller left
        k_BKD, v_BKD = self.kv_proj(y_BKD).chunk(2, dim=-1)
        o_BHQd = attention(
            q_BHQd,
            split_heads(k_BKD, self.num_heads),
            split_heads(v_BKD, self.num_heads),
            nonempty_keys(y_mask_BK),
            MaskSpec(),
            self.backend,
        )
        xp_BQD = self.out(merge_heads(o_BHQd))
        if self.gate is None:
            g = self.act(self.alpha)
        else:
            g = self.act(self.gate(torch.cat([x_BQD, xp_BQD], dim=-1)))
        z_BQD = x_BQD + g * xp_BQD
        if self.norm is not None:
            z_BQD = self.norm(z_BQD)
        z_BQD = z_BQD * x_mask_BQ.unsqueeze(-1).to(z_BQD.dtype)
        return z_BQD, masked_abs_cos(x_BQD, xp_BQD, x_mask_BQ)

    def flops(self, q_len: int | Lengths, k_len: int | Lengths, executed: bool = False) -> FlopCount:
        """FLOPs at query / key lengths ``q_len`` / ``k_len`` (one example), or summed over a batch's real ``Lengths``.

        Every real query attends every real key of its example (an example without keys attends
        nothing: the padded kernel's zero slot is padding).
        """
        d = self.out.in_features
        q, k = Lengths.of(q_len), Lengths.of(k_len)
        attn = cross_attention_flops(q, k, d, self.backend if executed else None)
        total = linear(d, d, tokens=q.tokens) + linear(d, 2 * d, tokens=k.tokens) + attn + linear(d, d, tokens=q.tokens)
        if self.gate is not None:
            total = total + linear(2 * d, d, tokens=q.tokens)
        return total


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer over one padded sequence: ``s + MHA(LN(s))``, then ``+ FFN(LN(.))``.

    Args:
        dim: D.
        num_heads: H.
        ffn_dim: hidden width of the feed-forward block.
        backend: attention kernel.
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, backend: AttentionBackend) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.backend = backend
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, dim))

    def forward(self, s_BLD: torch.Tensor, mask_BL: torch.Tensor) -> torch.Tensor:
        """``[B, L, D] -> [B, L, D]`` (zeros at padding)."""
        q, k, v = (split_heads(t, self.num_heads) for t in self.qkv(self.norm1(s_BLD)).chunk(3, dim=-1))
        spec = MaskSpec(self_attention=True)
        s_BLD = s_BLD + self.out(merge_heads(attention(q, k, v, mask_BL, spec, self.backend)))
        s_BLD = s_BLD + self.ffn(self.norm2(s_BLD))
        return s_BLD * mask_BL.unsqueeze(-1).to(s_BLD.dtype)

    def flops(self, seq_len: int | Lengths, executed: bool = False) -> FlopCount:
        """FLOPs at ``seq_len`` (one example), or summed over a batch's real ``Lengths`` (exact backward)."""
        d, n = self.out.in_features, Lengths.of(seq_len)
        attn = self_attention_flops(n, d, MaskSpec(self_attention=True), self.backend if executed else None)
        ffn = self.ffn[0].out_features  # type: ignore[union-attr]
        return (
            linear(d, 3 * d, tokens=n.tokens)
            + attn
            + linear(d, d, tokens=n.tokens)
            + linear(d, ffn, tokens=n.tokens)
            + linear(ffn, d, tokens=n.tokens)
        )
