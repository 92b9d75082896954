"""The Wukong interaction layer: a Factorization Machine Block and a Linear Compress Block side by side.

Zhang et al. 2024, "Wukong: Towards a Scaling Law for Large-Scale Recommendation", §3:

    X_{i+1} = LN( concat( FMB(X_i), LCB(X_i) ) + residual(X_i) )
    FMB(X) = reshape( MLP( LN( flatten( X (Xᵀ Y) ) ) ) )        -> n_F tokens  (optimized FM)
    LCB(X) = W_L X                                             -> n_L tokens  (mix over tokens)

``residual`` is the identity when the token count is unchanged, else a learned linear map over
the token axis (like LCB). ``WukongLayer`` is the reusable unit (``[B, N, D] -> [B, n_F + n_L, D]``);
Kunlun's mixture of Wukong experts and Lattice's fusion block build on it. A caller may supply the FMB
MLP (``mlp_factory``; extra arguments of the layer's ``forward`` are passed on to it, e.g. Lattice's
per-domain masks) and drop the LayerNorm biases (``bias=False``); the defaults are the paper's layer.

Tensor legend: B batch, N tokens in, M tokens out (n_F + n_L), F FMB tokens n_F, C LCB tokens n_L,
D token width, K FM rank k.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from recscale.modules.flops import FlopCount, linears, matmul
from recscale.modules.mlp import MLP

MLPFactory = Callable[[int, list[int]], nn.Module]
"""``(in_dim, widths) -> module`` mapping ``[B, in_dim] -> [B, widths[-1]]`` (no activation after the last
layer); it may take extra forward arguments and may count its own FLOPs (``flops() -> FlopCount``)."""


class LinearCompressBlock(nn.Module):
    """A learned linear map over the token axis: ``[B, N, D] -> [B, C, D]`` (``W [C, N]``)."""

    def __init__(self, num_tokens: int, num_out_tokens: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_out_tokens, num_tokens))
        nn.init.xavier_uniform_(self.weight)

    @property
    def num_tokens(self) -> int:
        """N."""
        return int(self.weight.shape[1])

    @property
    def num_out_tokens(self) -> int:
        """C."""
        return int(self.weight.shape[0])

    def forward(self, x_BND: torch.Tensor) -> torch.Tensor:
        """``W X`` per example."""
        return torch.matmul(self.weight, x_BND)

    def flops(self, dim: int) -> FlopCount:
        """Per-example FLOPs for tokens of width ``dim`` (the input always needs a gradient)."""
        return matmul(self.num_out_tokens, self.num_tokens, dim)


class FactorizationMachineBlock(nn.Module):
    """Optimized FM ``X (Xᵀ Y)`` -> LayerNorm -> MLP -> ``num_out_tokens`` tokens.

    ``Y [N, K]`` is a learned projection, or, when ``attentive``, computed per example from the
    layer's linearly compressed input (the LCB output, ``[B, C, D]``) by an MLP. Computing
    ``X (Xᵀ Y)`` instead of ``(X Xᵀ) Y`` costs O(N·D·K) instead of O(N²·D).

    Args:
        num_tokens: N.
        dim: D.
        num_out_tokens: F.
        rank: K.
        mlp: hidden widths of the MLP; its output layer (to ``F * D``, no activation) is added.
        attentive: input-attentive Y.
        attentive_mlp: hidden widths of the MLP computing Y (empty = one linear layer).
        num_compressed_tokens: C, the tokens the attentive MLP reads.
        activation: MLP activation.
        dropout: MLP dropout.
        bias: the LayerNorm has a bias.
        mlp_factory: builds the MLP instead of ``MLP(..., activation, dropout)`` (same in / out widths).
    """

    def __init__(
        self,
        num_tokens: int,
        dim: int,
        num_out_tokens: int,
        rank: int,
        mlp: list[int],
        attentive: bool = False,
        attentive_mlp: list[int] | None = None,
        num_compressed_tokens: int = 0,
        activation: str = "relu",
        dropout: float = 0.0,
        bias: bool = True,
        mlp_factory: MLPFactory | None = None,
    ) -> None:
        super().__init__()
        self.num_tokens, self.dim, self.num_out_tokens, self.rank = num_tokens, dim, num_out_tokens, rank
        self.projection: nn.Parameter | None = None
        self.attention: MLP | None = None
        if attentive:
            if num_compressed_tokens <= 0:
                raise ValueError("model.wukong.attentive_fm: needs num_lcb_tokens > 0 (Y is computed from the LCB)")
            widths = [*(attentive_mlp or []), num_tokens * rank]
            self.attention = MLP(num_compressed_tokens * dim, widths, activation, last_activation=False)
        else:
            self.projection = nn.Parameter(torch.empty(num_tokens, rank))
            nn.init.xavier_uniform_(self.projection)
        self.norm = nn.LayerNorm(num_tokens * rank, bias=bias)
        widths = [*mlp, num_out_tokens * dim]
        self.mlp = (
            mlp_factory(num_tokens * rank, widths)
            if mlp_factory is not None
            else MLP(num_tokens * rank, widths, activation, dropout, last_activation=False)
        )

    def forward(
        self, x_BND: torch.Tensor, compressed_BCD: torch.Tensor | None = None, *mlp_args: torch.Tensor | None
    ) -> torch.Tensor:
        """``[B, N, D]`` (and the LCB output when attentive) -> ``[B, F, D]``; ``mlp_args`` go to the MLP."""
        b = x_BND.shape[0]
        x_BDN = x_BND.transpose(1, 2)
        if self.attention is not None:
            assert compressed_BCD is not None, "an attentive FMB needs the compressed input"
            y_BNK = self.attention(compressed_BCD.flatten(1)).view(b, self.num_tokens, self.rank)
            xty_BDK = torch.bmm(x_BDN, y_BNK)
        else:
            assert self.projection is not None
            xty_BDK = torch.matmul(x_BDN, self.projection)
        fm_BNK = torch.bmm(x_BND, xty_BDK)
        h: torch.Tensor = self.mlp(self.norm(fm_BNK.flatten(1)), *mlp_args)
        return h.view(b, self.num_out_tokens, self.dim)

    def flops(self) -> dict[str, FlopCount]:
        """Per-example FLOPs: the FM products, the attentive MLP (if any), the FMB MLP."""
        n, d, k = self.num_tokens, self.dim, self.rank
        own = getattr(self.mlp, "flops", None)  # a supplied MLP may count itself (e.g. one copy per domain)
        out = {"fm": matmul(d, n, k) + matmul(n, d, k), "fmb_mlp": own() if callable(own) else linears(self.mlp)}
        if self.attention is not None:
            out["attentive"] = linears(self.attention)
        return out


class WukongLayer(nn.Module):
    """One Wukong interaction layer: ``tokens [B, N, D] -> [B, F + C, D]``.

    Args:
        num_tokens: N, tokens in.
        dim: D, token width.
        num_fmb_tokens: F, tokens from the FMB.
        num_lcb_tokens: C, tokens from the LCB.
        fm_rank: K, columns of the FM projection Y.
        fmb_mlp: hidden widths of the FMB MLP.
        attentive: input-attentive Y (computed from the LCB output).
        attentive_mlp: hidden widths of the MLP that computes Y.
        activation: MLP activation.
        dropout: MLP dropout.
        bias: the LayerNorms have biases.
        mlp_factory: builds the FMB MLP (see ``FactorizationMachineBlock``).

    Example::

        layer = WukongLayer(num_tokens=12, dim=16, num_fmb_tokens=8, num_lcb_tokens=8, fm_rank=4, fmb_mlp=[64])
        layer(torch.randn(32, 12, 16)).shape   # [32, 16, 16]
    """

    def __init__(
        self,
        num_tokens: int,
        dim: int,
        num_fmb_tokens: int,
        num_lcb_tokens: int,
        fm_rank: int,
        fmb_mlp: list[int],
        attentive: bool = False,
        attentive_mlp: list[int] | None = None,
        activation: str = "relu",
        dropout: float = 0.0,
        bias: bool = True,
        mlp_factory: MLPFactory | None = None,
    ) -> None:
        super().__init__()
        if num_fmb_tokens <= 0 or num_lcb_tokens < 0:
            raise ValueError(
                f"model.wukong: num_fmb_tokens must be > 0 and num_lcb_tokens >= 0, got {num_fmb_tokens}, "
                f"{num_lcb_tokens}"
            )
        self.num_tokens = num_tokens
        self.dim = dim
        self.num_out_tokens = num_fmb_tokens + num_lcb_tokens
        self.lcb = LinearCompressBlock(num_tokens, num_lcb_tokens) if num_lcb_tokens > 0 else None
        self.fmb = FactorizationMachineBlock(
            num_tokens,
            dim,
            num_fmb_tokens,
            fm_rank,
            fmb_mlp,
            attentive,
            attentive_mlp,
            num_lcb_tokens,
            activation,
            dropout,
            bias,
            mlp_factory,
        )
        compress = self.num_out_tokens != num_tokens
        self.residual = LinearCompressBlock(num_tokens, self.num_out_tokens) if compress else None
        self.norm = nn.LayerNorm(dim, bias=bias)

    def forward(self, x_BND: torch.Tensor, *mlp_args: torch.Tensor | None) -> torch.Tensor:
        """``LN(concat(FMB(X), LCB(X)) + residual(X))``; ``mlp_args`` go to the FMB MLP."""
        lcb_BCD = self.lcb(x_BND) if self.lcb is not None else None
        fmb_BFD = self.fmb(x_BND, lcb_BCD, *mlp_args)
        out_BMD = torch.cat([fmb_BFD, lcb_BCD], dim=1) if lcb_BCD is not None else fmb_BFD
        res_BMD = self.residual(x_BND) if self.residual is not None else x_BND
        out: torch.Tensor = self.norm(out_BMD + res_BMD)
        return out

    def flops(self) -> dict[str, FlopCount]:
        """Per-example FLOPs by part: ``fm``, ``fmb_mlp``, ``attentive``, ``lcb``, ``residual``."""
        out = self.fmb.flops()
        out["lcb"] = self.lcb.flops(self.dim) if self.lcb is not None else FlopCount()
        out["residual"] = self.residual.flops(self.dim) if self.residual is not None else FlopCount()
        return out
