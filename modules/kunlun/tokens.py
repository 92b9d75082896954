"""Kunlun's non-sequence side: feature tokens and their gated compression X_sum.

Tokens (InterFormer's X^(1)): the dense features through ``model.dense_arch`` and a
linear map to ``dense_tokens`` tokens, then one token per pooled sparse feature (projected to the
token width when its embedding dim differs). X_sum (InterFormer's Cross Arch): a learned linear
mixing of the n tokens into N_sum tokens, ``Z = W_t X + b``, then a self gate.

Legend: B batch, N dense features, F sparse features, n tokens, S X_sum tokens, D token width.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from recscale.modules.flops import FlopCount, linear, linears
from recscale.modules.mlp import MLP

if TYPE_CHECKING:  # the Kunlun blocks import no TorchRec (benchmarks/mfu_gpu_kunlun.py runs on plain torch)
    from recscale.modules.layout import PooledLayout


class NonSequenceTokens(nn.Module):
    """``dense [B, N], pooled [B, sum_f D_f] -> X [B, n, D]`` with n = dense_tokens + F.

    Args:
        num_dense: N (0 = no dense tokens).
        dense_arch: hidden widths of the dense MLP.
        dense_tokens: tokens made from the dense features.
        pooled: layout of the pooled sparse features.
        dim: token width D.
        activation: MLP activation.
    """

    def __init__(
        self,
        num_dense: int,
        dense_arch: list[int],
        dense_tokens: int,
        pooled: PooledLayout,
        dim: int,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.dim = dim
        self.dense_tokens = dense_tokens if num_dense > 0 else 0
        self.dense = (
            MLP(num_dense, [*dense_arch, dense_tokens * dim], activation, last_activation=False)
            if self.dense_tokens
            else None
        )
        self.feature_dims = pooled.feature_dims
        same = all(d == dim for d in pooled.feature_dims)
        self.proj = None if same else nn.ModuleList(nn.Linear(d, dim) for d in pooled.feature_dims)

    @property
    def num_tokens(self) -> int:
        """Tokens n (dense tokens + one per sparse feature)."""
        return self.dense_tokens + len(self.feature_dims)

    def forward(self, dense_BN: torch.Tensor, pooled_BP: torch.Tensor) -> torch.Tensor:
        """``[B, n, D]``: dense tokens first, then the sparse features in pooled order."""
        b = pooled_BP.shape[0]
        if self.proj is None:
            sparse_BFD = pooled_BP.view(b, len(self.feature_dims), self.dim)
        else:
            parts = torch.split(pooled_BP, list(self.feature_dims), dim=1)
            sparse_BFD = torch.stack([p(x) for p, x in zip(self.proj, parts)], dim=1)
        if self.dense is None:
            return sparse_BFD
        dense_BTD = self.dense(dense_BN).view(b, self.dense_tokens, self.dim)
        return torch.cat([dense_BTD, sparse_BFD], dim=1)

    def flops(self) -> dict[str, FlopCount]:
        """Per-example FLOPs: the dense MLP (its input needs no gradient) and the sparse projections."""
        out: dict[str, FlopCount] = {}
        if self.dense is not None:
            out["tokens/dense"] = linears(self.dense, input_grad=False)
        if self.proj is not None:
            out["tokens/sparse"] = linears(self.proj)
        return out


class GatedCompression(nn.Module):
    """X_sum: ``X [B, n, D] -> [B, S, D]``, ``Z = W_t X + b`` then a gate.

    ``self``: ``Z * sigmoid(Z W_g + b_g)`` (keeps the sign and scale of Z); ``sigmoid_product``:
    ``sigmoid(Z * (Z W_g + b_g))``, the literal reading of the sources.

    Args:
        num_tokens: n.
        num_out: S.
        dim: D.
        gate: ``self`` or ``sigmoid_product``.
    """

    def __init__(self, num_tokens: int, num_out: int, dim: int, gate: str = "self") -> None:
        super().__init__()
        if gate not in ("self", "sigmoid_product"):
            raise ValueError(f"model.kunlun.xsum_gate: unknown {gate!r}; expected self or sigmoid_product")
        self.gate_kind = gate
        self.mix = nn.Linear(num_tokens, num_out)
        self.gate = nn.Linear(dim, dim)

    def forward(self, x_BnD: torch.Tensor) -> torch.Tensor:
        """``[B, S, D]``."""
        z_BSD = self.mix(x_BnD.transpose(1, 2)).transpose(1, 2)
        g_BSD = self.gate(z_BSD)
        if self.gate_kind == "self":
            return z_BSD * torch.sigmoid(g_BSD)
        return torch.sigmoid(z_BSD * g_BSD)

    def flops(self) -> FlopCount:
        """Per-example FLOPs (forward and exact backward)."""
        n, s = self.mix.in_features, self.mix.out_features
        d = self.gate.in_features
        return linear(n, s, tokens=d) + linear(d, d, tokens=s)
