"""Lattice's fusion side: the DWFB (a Wukong layer) and Extended Context Storage (ECS).

**DWFB** (the Wukong / DHEN fusion block) is ``recscale.modules.wukong.WukongLayer`` itself, built
with Lattice's FMB MLP: a bias-less ``LatticeMLP`` (SwishNorm between layers), one copy per domain
group when untied, and bias-less LayerNorms (``bias=False``). Its input is the sequence summaries
and the non-sequence tokens, ``[Compress(O_s); O_cd]``; its output, ``n_F + n_L`` tokens, is the
layer's new O_cd:

    X' = LN(concat(FMB(X), LCB(X)) + residual(X))             (docs/models/wukong.md)

**ECS**: every layer's output O^(j) (j = 0 is the processors' O_cd) is kept; the input of layer
l (1-based) is ``O^(l-1) + Σ_{j <= l-2} P_{l,j}(O^(j))``, DenseNet-style (O^(l-1) itself is the
direct input). ``P`` is a bias-less map, zero-initialised so that at init the network is the
plain residual stack:

- ``flat``: ``Linear(n_j·d -> n·d)`` on the flattened tokens (mixes tokens and channels);
- ``tokens``: an ``n × n_j`` map over the token axis, shared by the d channels (a Wukong
  ``LinearCompressBlock``).

Layer l has l - 1 maps; L layers have L(L - 1)/2. With one layer ECS has nothing to add.

Legend: B batch, n tokens of a layer input, n_j tokens of O^(j), d width, G domain groups.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from recscale.modules.flops import FlopCount, linear
from recscale.modules.lattice.layers import LatticeMLP, UntiedByDomain
from recscale.modules.wukong import LinearCompressBlock, WukongLayer


def fusion_block(
    num_tokens: int,
    dim: int,
    num_fmb_tokens: int,
    num_lcb_tokens: int,
    fm_rank: int,
    fmb_mlp: list[int],
    norm: str = "rms_gate_norm",
    bias: bool = False,
    groups: int = 1,
) -> WukongLayer:
    """The DWFB: ``[B, num_tokens, d] -> [B, n_F + n_L, d]``, called as ``block(x, domain_BG)``.

    Args:
        num_tokens: tokens in.
        dim: d.
        num_fmb_tokens: n_F.
        num_lcb_tokens: n_L.
        fm_rank: k.
        fmb_mlp: hidden widths of the FMB MLP.
        norm: ``SwishNorm`` kind of the FMB MLP.
        bias: Linear and LayerNorm biases.
        groups: domain groups of the FMB MLP (1 = tied).
    """

    def make_mlp(in_dim: int, widths: list[int]) -> nn.Module:
        return UntiedByDomain(lambda: LatticeMLP(in_dim, widths, norm, bias), groups)

    return WukongLayer(
        num_tokens,
        dim,
        num_fmb_tokens,
        num_lcb_tokens,
        fm_rank,
        fmb_mlp,
        bias=bias,
        mlp_factory=make_mlp,
    )


class ExtendedContextStorage(nn.Module):
    """The ECS maps ``P_{l,j}``: ``context(l, outputs) -> [B, n_{l-1}, d]`` added to layer l's input.

    Args:
        token_counts: tokens of O^(0) .. O^(L-1) (the inputs of layers 1 .. L).
        dim: d.
        kind: ``flat`` or ``tokens``.
    """

    def __init__(self, token_counts: list[int], dim: int, kind: str = "flat") -> None:
        super().__init__()
        if kind not in ("flat", "tokens"):
            raise ValueError(f"model.lattice.ecs_map: expected flat or tokens, got {kind!r}")
        self.kind = kind
        self.dim = dim
        self.token_counts = list(token_counts)
        maps: dict[str, nn.Module] = {}
        for layer in range(2, len(token_counts) + 1):
            n = token_counts[layer - 1]
            for j in range(layer - 1):
                p: nn.Module = (
                    nn.Linear(token_counts[j] * dim, n * dim, bias=False)
                    if kind == "flat"
                    else LinearCompressBlock(token_counts[j], n)
                )
                nn.init.zeros_(p.weight)
                maps[f"{layer}_{j}"] = p
        self.maps = nn.ModuleDict(maps)

    def context(self, layer: int, outputs: list[torch.Tensor]) -> torch.Tensor | None:
        """``Σ_{j <= layer-2} P_{layer,j}(O^(j))`` for 1-based ``layer``; None when it has no map."""
        out: torch.Tensor | None = None
        for j in range(layer - 1):
            p = self.maps[f"{layer}_{j}"]
            x_BnD = outputs[j]
            if self.kind == "flat":
                y = p(x_BnD.flatten(1)).view(x_BnD.shape[0], self.token_counts[layer - 1], self.dim)
            else:
                y = p(x_BnD)
            out = y if out is None else out + y
        return out

    def flops(self) -> FlopCount:
        """Per example, every map (forward and exact backward: both the map and its input train)."""
        out = FlopCount()
        for p in self.maps.values():
            if isinstance(p, nn.Linear):
                out = out + linear(p.in_features, p.out_features)
            else:
                out = out + cast(LinearCompressBlock, p).flops(self.dim)
        return out
