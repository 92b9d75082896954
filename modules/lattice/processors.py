"""Lattice's feature processors: every input becomes tokens of one width d.

- ``FeatureTokens``: O_cd = concat(O_c, O_d), ``[B, n_c + n_d, d]``. O_c has one token per pooled
  sparse feature (its pooled embedding, or a bias-less Linear of it when its width is not d); O_d
  is the dense features through a ``LatticeMLP`` to ``dense_tokens`` tokens.
- ``SequenceTokens``: one event type's padded embeddings ``[B, L, D_e] -> [B, L, d]`` (a bias-less
  Linear when D_e != d), zeros at padding so nothing downstream reads padded slots.

Legend: B batch, N dense features, P pooled width (Σ D_f), F sparse features, L sequence length,
d token width.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from recscale.modules.flops import FlopCount, Lengths, linear
from recscale.modules.lattice.layers import LatticeMLP

if TYPE_CHECKING:  # no TorchRec at run time (the dense arches build on plain torch)
    from recscale.modules.layout import PooledLayout


class FeatureTokens(nn.Module):
    """``dense [B, N], pooled [B, P] -> O_cd [B, F + n_d, d]`` (sparse tokens first, then dense tokens).

    Args:
        num_dense: N (0 = no dense tokens).
        pooled: layout of the pooled sparse features.
        dim: d.
        dense_arch: hidden widths of the dense MLP.
        dense_tokens: n_d.
        norm: ``SwishNorm`` kind of the dense MLP.
        bias: Linear biases.
    """

    def __init__(
        self,
        num_dense: int,
        pooled: PooledLayout,
        dim: int,
        dense_arch: list[int],
        dense_tokens: int,
        norm: str = "rms_gate_norm",
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.feature_dims = tuple(pooled.feature_dims)
        self.dense_tokens = dense_tokens if num_dense > 0 else 0
        self.dense = LatticeMLP(num_dense, [*dense_arch, dense_tokens * dim], norm, bias) if self.dense_tokens else None
        projected = any(w != dim for w in self.feature_dims)
        self.proj: nn.ModuleList | None = (
            nn.ModuleList(nn.Identity() if w == dim else nn.Linear(w, dim, bias=bias) for w in self.feature_dims)
            if projected
            else None
        )

    @property
    def num_tokens(self) -> int:
        """Tokens n = F + n_d."""
        return len(self.feature_dims) + self.dense_tokens

    def forward(self, dense_BN: torch.Tensor, pooled_BP: torch.Tensor) -> torch.Tensor:
        """O_cd ``[B, n, d]``."""
        b = pooled_BP.shape[0]
        if self.proj is None:
            sparse_BFd = pooled_BP.view(b, len(self.feature_dims), self.dim)
        else:
            parts = torch.split(pooled_BP, list(self.feature_dims), dim=1)
            sparse_BFd = torch.stack([p(x) for p, x in zip(self.proj, parts)], dim=1)
        if self.dense is None:
            return sparse_BFd
        return torch.cat([sparse_BFd, self.dense(dense_BN).view(b, self.dense_tokens, self.dim)], dim=1)

    def flops(self) -> FlopCount:
        """Per example: the projections and the dense MLP (whose raw input needs no gradient)."""
        out = self.dense.flops(input_grad=False) if self.dense is not None else FlopCount()
        for p in self.proj or []:
            if isinstance(p, nn.Linear):
                out = out + linear(p.in_features, p.out_features)
        return out


class SequenceTokens(nn.Module):
    """One event type's embeddings ``[B, L, D_e] -> [B, L, d]``, zeros at padding.

    Args:
        embedding_dim: D_e.
        dim: d.
        bias: Linear bias.
    """

    def __init__(self, embedding_dim: int, dim: int, bias: bool = False) -> None:
        super().__init__()
        self.proj = nn.Linear(embedding_dim, dim, bias=bias) if embedding_dim != dim else None

    def forward(self, seq_BLE: torch.Tensor, mask_BL: torch.Tensor) -> torch.Tensor:
        """Projected (when D_e != d), padded slots zeroed."""
        s_BLd = seq_BLE if self.proj is None else self.proj(seq_BLE)
        return s_BLd * mask_BL.unsqueeze(-1).to(s_BLd.dtype)

    def flops(self, lengths: Lengths) -> FlopCount:
        """The projection of every real event, summed over the examples of ``lengths``."""
        if self.proj is None:
            return FlopCount()
        return linear(self.proj.in_features, self.proj.out_features, tokens=lengths.tokens)
