"""DCN-V2 dense arch: low-rank cross network + deep MLP (Wang et al. 2021, "DCN V2").

Cross layer l (x0 = input, x_l = previous output, all ``[B, d]``):
    x_{l+1} = x0 * (U_l (V_lᵀ x_l) + b_l) + x_l          (low rank r)
    x_{l+1} = x0 * (W_l x_l + b_l) + x_l                 (full rank, ``low_rank=0``)
``stacked``: cross network, then the deep MLP on its output. ``parallel``: both on x0, concatenated.
"""

from __future__ import annotations

import torch
from torch import nn

from recscale.modules.flops import FlopCount, linear_module, linears
from recscale.modules.mlp import MLP
from recscale.modules.outputs import DenseOutput


class CrossLayer(nn.Module):
    """One DCN-V2 cross layer, ``x0 [B, d], x [B, d] -> [B, d]``."""

    def __init__(self, dim: int, low_rank: int) -> None:
        super().__init__()
        self.low_rank = low_rank
        if low_rank > 0:
            self.down = nn.Linear(dim, low_rank, bias=False)
            self.up = nn.Linear(low_rank, dim)
        else:
            self.full = nn.Linear(dim, dim)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``x0 * (W x + b) + x``."""
        wx = self.up(self.down(x)) if self.low_rank > 0 else self.full(x)
        return x0 * wx + x

    def flops(self) -> FlopCount:
        """Per-example FLOPs (its input always needs a gradient)."""
        if self.low_rank > 0:
            return linear_module(self.down) + linear_module(self.up)
        return linear_module(self.full)


class DCNv2Dense(nn.Module):
    """Everything of DCN-V2 except the embedding tables.

    Args:
        num_dense: dense input features N.
        pooled_dim: width of the concatenated pooled embeddings.
        bottom: MLP over dense features before concatenation (empty = use them raw).
        deep: deep MLP hidden widths.
        num_cross_layers: cross layers.
        low_rank: rank of each cross layer (0 = full rank).
        structure: ``stacked`` or ``parallel``.
        num_tasks: logits per example T.
        activation: MLP activation.
        dropout: MLP dropout.
        batch_norm: batch norm in the top / deep MLP.
    """

    def __init__(
        self,
        num_dense: int,
        pooled_dim: int,
        bottom: list[int],
        deep: list[int],
        num_cross_layers: int,
        low_rank: int,
        structure: str = "stacked",
        num_tasks: int = 1,
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.num_tasks = num_tasks
        self.structure = structure
        self.bottom = MLP(num_dense, bottom, activation) if (bottom and num_dense > 0) else None
        dense_out = self.bottom.out_dim if self.bottom is not None else num_dense
        self.input_dim = dense_out + pooled_dim
        self.num_dense = num_dense
        self.cross = nn.ModuleList(CrossLayer(self.input_dim, low_rank) for _ in range(num_cross_layers))
        self.deep: MLP | None = MLP(self.input_dim, deep, activation, dropout, batch_norm=batch_norm)
        """The deep MLP; None when per-task experts replace it (``model.multitask.expert_input: interaction``)."""
        self.out_dim = self.deep.out_dim + (self.input_dim if structure == "parallel" else 0)
        """Width of the representation the head reads (``represent``)."""
        self.interaction_dim = self.input_dim * (2 if structure == "parallel" else 1)
        """Width of what the deep MLP reads (``interact``): the cross output, with ``x0`` beside it when parallel."""
        self.head: nn.Linear | None = nn.Linear(self.out_dim, num_tasks)
        """One logit per task; None when per-task layers replace it (``modules/multitask/dense.py``)."""

    def _crossed(self, dense: torch.Tensor, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x0 [B, input_dim]`` (dense and pooled side by side) and the cross layers' output ``[B, input_dim]``."""
        if self.bottom is not None:
            dense = self.bottom(dense)
        x0 = torch.cat([dense, pooled], dim=1) if self.num_dense > 0 else pooled
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        return x0, x

    def represent(self, dense: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """``dense [B, N]``, ``pooled [B, sum D]`` -> what the head reads ``[B, out_dim]``."""
        assert self.deep is not None, "per-task experts replaced the deep MLP: call interact()"
        x0, x = self._crossed(dense, pooled)
        if self.structure == "stacked":
            return self.deep(x)
        return torch.cat([x, self.deep(x0)], dim=1)

    def interact(self, dense: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """``dense [B, N]``, ``pooled [B, sum D]`` -> the interactions before any MLP ``[B, interaction_dim]``.

        The cross output (stacked), or the cross output beside ``x0`` (parallel).
        """
        x0, x = self._crossed(dense, pooled)
        return x if self.structure == "stacked" else torch.cat([x, x0], dim=1)

    def forward(self, dense: torch.Tensor, pooled: torch.Tensor) -> DenseOutput:
        """``dense [B, N]``, ``pooled [B, sum D]`` -> logits ``[B, T]``, aux loss 0, no diagnostics."""
        assert self.head is not None, "per-task layers replaced the head: call represent()"
        logits = self.head(self.represent(dense, pooled))
        return logits, logits.new_zeros(()), {}

    def flops(self) -> dict[str, FlopCount]:
        """Per-example FLOPs of each part (forward and exact backward)."""
        cross = FlopCount()
        for layer in self.cross:
            cross = cross + layer.flops()
        out = {"cross": cross}
        if self.deep is not None:
            out["deep"] = linears(self.deep)
        if self.head is not None:
            out["head"] = linear_module(self.head)
        if self.bottom is not None:
            out = {"bottom": linears(self.bottom, input_grad=False), **out}
        return out
