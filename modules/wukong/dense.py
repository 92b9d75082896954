"""Wukong's dense arch: embedding tokens -> l stacked ``WukongLayer`` s -> top MLP -> logits.

The embedding layer turns the pooled sparse features and the dense features into N tokens of one
width D (paper §3.1, "Embedding Layer"):

- a sparse feature of width D yields one token (its pooled embedding) by default;
- a feature listed in ``tokens_per_feature`` with c tokens, or whose width differs from D, is
  projected: ``Linear(D_f, c·D, bias=False)`` on its pooled embedding, reshaped to c tokens. The
  paper gives important features several embeddings (several tables); a learned projection of
  the one pooled embedding is our stand-in, and keeps every table at one lookup per feature;
- ``grouped_features`` (small, unimportant features) are concatenated and mapped to
  ``grouped_tokens`` tokens by an MLP, as in the paper;
- dense features -> MLP (``dense_arch`` hidden widths, then linear to ``dense_tokens·D``).

Tensor legend: B batch, N tokens, D token width, T tasks.
"""

from __future__ import annotations

import torch
from torch import nn

from recscale.modules.flops import FlopCount, linear_module, linears
from recscale.modules.mlp import MLP
from recscale.modules.outputs import DenseOutput
from recscale.modules.wukong.block import WukongLayer


class WukongEmbedding(nn.Module):
    """``dense [B, N_dense]``, ``pooled [B, sum D_f]`` -> tokens ``[B, N, D]``.

    Token order: dense tokens, one-token features (feature order), projected features, group.

    Args:
        num_dense: dense features (0 = none).
        feature_names: pooled sparse features, in the pooled layout's order.
        feature_dims: their widths.
        dim: D.
        tokens_per_feature: tokens per feature, for features with more than one.
        grouped_features: features concatenated into the group MLP.
        grouped_tokens: tokens the group MLP makes.
        grouped_mlp: hidden widths of the group MLP.
        dense_arch: hidden widths of the dense-feature MLP.
        dense_tokens: tokens made from the dense features.
        activation: MLP activation.
    """

    def __init__(
        self,
        num_dense: int,
        feature_names: list[str],
        feature_dims: list[int],
        dim: int,
        tokens_per_feature: dict[str, int] | None = None,
        grouped_features: list[str] | None = None,
        grouped_tokens: int = 1,
        grouped_mlp: list[int] | None = None,
        dense_arch: list[int] | None = None,
        dense_tokens: int = 1,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        counts = tokens_per_feature or {}
        grouped = set(grouped_features or [])
        for name in [*counts, *grouped]:
            if name not in feature_names:
                raise ValueError(f"model.wukong: unknown sparse feature {name!r}; features: {', '.join(feature_names)}")
        offsets = [sum(feature_dims[:i]) for i in range(len(feature_dims))]
        self.dim = dim
        identity_cols: list[int] = []
        self.projected: list[tuple[int, int]] = []
        projections = []
        group_cols: list[int] = []
        for name, offset, width in zip(feature_names, offsets, feature_dims):
            cols = list(range(offset, offset + width))
            c = counts.get(name, 1)
            if name in grouped:
                group_cols += cols
            elif c == 1 and width == dim:
                identity_cols += cols
            else:
                self.projected.append((offset, offset + width))
                projections.append(nn.Linear(width, c * dim, bias=False))
        self.identity_cols: torch.Tensor
        self.group_cols: torch.Tensor
        self.register_buffer("identity_cols", torch.tensor(identity_cols, dtype=torch.long), persistent=False)
        self.register_buffer("group_cols", torch.tensor(group_cols, dtype=torch.long), persistent=False)
        self.projections = nn.ModuleList(projections)
        self.group_mlp: MLP | None = (
            MLP(len(group_cols), [*(grouped_mlp or []), grouped_tokens * dim], activation, last_activation=False)
            if group_cols
            else None
        )
        self.dense_mlp: MLP | None = (
            MLP(num_dense, [*(dense_arch or []), dense_tokens * dim], activation, last_activation=False)
            if num_dense > 0 and dense_tokens > 0
            else None
        )
        self.num_tokens = (
            len(identity_cols) // dim
            + sum(p.out_features // dim for p in projections)
            + (grouped_tokens if self.group_mlp is not None else 0)
            + (dense_tokens if self.dense_mlp is not None else 0)
        )

    def forward(self, dense: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """The N tokens of each example."""
        b = pooled.shape[0]
        parts = []
        if self.dense_mlp is not None:
            parts.append(self.dense_mlp(dense).view(b, -1, self.dim))
        if self.identity_cols.numel():
            parts.append(pooled.index_select(1, self.identity_cols).view(b, -1, self.dim))
        for (start, end), proj in zip(self.projected, self.projections):
            parts.append(proj(pooled[:, start:end]).view(b, -1, self.dim))
        if self.group_mlp is not None:
            parts.append(self.group_mlp(pooled.index_select(1, self.group_cols)).view(b, -1, self.dim))
        return torch.cat(parts, dim=1)

    def flops(self) -> FlopCount:
        """Per-example FLOPs (the dense-feature MLP's first layer computes no input gradient)."""
        out = linears(self.dense_mlp, input_grad=False) if self.dense_mlp is not None else FlopCount()
        for proj in self.projections:
            out = out + linear_module(proj)
        if self.group_mlp is not None:
            out = out + linears(self.group_mlp)
        return out


class WukongDense(nn.Module):
    """Everything of Wukong except the embedding tables.

    Args:
        num_dense: dense input features.
        feature_names: pooled sparse features (pooled layout order).
        feature_dims: their widths.
        num_tasks: logits per example T.
        dim: token width D.
        num_layers: l.
        num_fmb_tokens: n_F.
        num_lcb_tokens: n_L.
        fm_rank: k.
        fmb_mlp: hidden widths of each FMB MLP.
        over_arch: hidden widths of the top MLP (a linear layer to T logits follows).
        attentive_fm: input-attentive FM projection.
        attentive_mlp: hidden widths of the attentive MLP.
        tokens_per_feature: features yielding several tokens.
        grouped_features: small features grouped through an MLP.
        grouped_tokens: tokens of the group.
        grouped_mlp: hidden widths of the group MLP.
        dense_arch: hidden widths of the dense-feature MLP.
        dense_tokens: tokens from the dense features.
        activation: MLP activation.
        dropout: dropout of the FMB and top MLPs.
        batch_norm: batch norm in the top MLP (before each activation).
    """

    def __init__(
        self,
        num_dense: int,
        feature_names: list[str],
        feature_dims: list[int],
        num_tasks: int,
        dim: int,
        num_layers: int,
        num_fmb_tokens: int,
        num_lcb_tokens: int,
        fm_rank: int,
        fmb_mlp: list[int],
        over_arch: list[int],
        attentive_fm: bool = False,
        attentive_mlp: list[int] | None = None,
        tokens_per_feature: dict[str, int] | None = None,
        grouped_features: list[str] | None = None,
        grouped_tokens: int = 1,
        grouped_mlp: list[int] | None = None,
        dense_arch: list[int] | None = None,
        dense_tokens: int = 1,
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.num_tasks = num_tasks
        self.embedding = WukongEmbedding(
            num_dense,
            feature_names,
            feature_dims,
            dim,
            tokens_per_feature,
            grouped_features,
            grouped_tokens,
            grouped_mlp,
            dense_arch,
            dense_tokens,
            activation,
        )
        layers = []
        n = self.embedding.num_tokens
        for _ in range(num_layers):
            layer = WukongLayer(
                n,
                dim,
                num_fmb_tokens,
                num_lcb_tokens,
                fm_rank,
                fmb_mlp,
                attentive_fm,
                attentive_mlp,
                activation,
                dropout,
            )
            layers.append(layer)
            n = layer.num_out_tokens
        self.layers = nn.ModuleList(layers)
        self.top = MLP(n * dim, over_arch, activation, dropout, batch_norm=batch_norm)
        self.head = nn.Linear(self.top.out_dim, num_tasks)

    def forward(self, dense: torch.Tensor, pooled: torch.Tensor) -> DenseOutput:
        """``dense [B, N]``, ``pooled [B, sum D]`` -> logits ``[B, T]``, aux loss 0, no diagnostics."""
        x_BND = self.embedding(dense, pooled)
        for layer in self.layers:
            x_BND = layer(x_BND)
        logits = self.head(self.top(x_BND.flatten(1)))
        return logits, logits.new_zeros(()), {}

    def flops(self) -> dict[str, FlopCount]:
        """Per-example FLOPs by part, summed over layers (forward and exact backward)."""
        out: dict[str, FlopCount] = {"embedding": self.embedding.flops()}
        for layer in self.layers:
            assert isinstance(layer, WukongLayer)
            for key, count in layer.flops().items():
                out[key] = out.get(key, FlopCount()) + count
        out["top"] = linears(self.top)
        out["head"] = linear_module(self.head)
        return out
