"""DLRM dense arch: bottom MLP on dense features, pairwise dot interaction, top MLP (Naumov et al. 2019).

Shapes: B examples, F pooled sparse features of dim D, N dense features, T tasks.
"""

from __future__ import annotations

import torch
from torch import nn

from recscale.modules.flops import FlopCount, linear_module, linears, matmul
from recscale.modules.mlp import MLP
from recscale.modules.outputs import DenseOutput


class DotInteraction(nn.Module):
    """All pairwise dot products of the F+1 vectors: ``[B, F+1, D] -> [B, P]``.

    P = (F+1)F/2 without the diagonal, (F+1)(F+2)/2 with it (``self_interaction``).
    """

    def __init__(self, num_vectors: int, self_interaction: bool = False) -> None:
        super().__init__()
        offset = 0 if self_interaction else 1
        rows, cols = torch.triu_indices(num_vectors, num_vectors, offset=offset)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        self.num_vectors = num_vectors

    @property
    def out_dim(self) -> int:
        """Number of dot products P."""
        return int(self.rows.numel())

    def forward(self, x_BVD: torch.Tensor) -> torch.Tensor:
        """``[B, V, D] -> [B, P]``."""
        z_BVV = torch.bmm(x_BVD, x_BVD.transpose(1, 2))
        return z_BVV[:, self.rows, self.cols]


class DLRMDense(nn.Module):
    """Everything of DLRM except the embedding tables.

    Args:
        num_dense: dense input features N (0 = none; the bottom MLP is then skipped).
        num_sparse: pooled sparse features F.
        embedding_dim: D, shared by all tables; the bottom MLP must end at D.
        bottom: bottom MLP widths (last == D).
        top: top MLP hidden widths.
        num_tasks: logits per example T.
        self_interaction: include the diagonal of the dot-product matrix.
        activation: MLP activation.
        dropout: MLP dropout.
        batch_norm: batch norm in the top / deep MLP.
    """

    def __init__(
        self,
        num_dense: int,
        num_sparse: int,
        embedding_dim: int,
        bottom: list[int],
        top: list[int],
        num_tasks: int = 1,
        self_interaction: bool = False,
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.num_sparse = num_sparse
        self.embedding_dim = embedding_dim
        self.num_tasks = num_tasks
        self.bottom = MLP(num_dense, bottom, activation) if num_dense > 0 else None
        num_vectors = num_sparse + (1 if self.bottom is not None else 0)
        self.interaction = DotInteraction(num_vectors, self_interaction)
        over_in = self.interaction.out_dim + (embedding_dim if self.bottom is not None else 0)
        self.top: MLP | None = MLP(over_in, top, activation, dropout, batch_norm=batch_norm)
        """The top MLP; None when per-task experts replace it (``model.multitask.expert_input: interaction``)."""
        self.interaction_dim = over_in
        """Width of what the top MLP reads (``interact``)."""
        self.out_dim = self.top.out_dim
        """Width of the representation the head reads (``represent``)."""
        self.head: nn.Linear | None = nn.Linear(self.out_dim, num_tasks)
        """One logit per task; None when per-task layers replace it (``modules/multitask/dense.py``)."""

    def interact(self, dense: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """``dense [B, N]``, ``pooled [B, F*D]`` -> what the top MLP reads ``[B, interaction_dim]``.

        The bottom MLP's output beside the pairwise dot products (the dot products alone without dense features).
        """
        x_BFD = pooled.view(-1, self.num_sparse, self.embedding_dim)
        if self.bottom is None:
            return self.interaction(x_BFD)
        d_BD = self.bottom(dense)
        x_BVD = torch.cat([d_BD.unsqueeze(1), x_BFD], dim=1)
        return torch.cat([d_BD, self.interaction(x_BVD)], dim=1)

    def represent(self, dense: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """``dense [B, N]``, ``pooled [B, F*D]`` -> the top MLP's output ``[B, out_dim]``."""
        assert self.top is not None, "per-task experts replaced the top MLP: call interact()"
        return self.top(self.interact(dense, pooled))

    def forward(self, dense: torch.Tensor, pooled: torch.Tensor) -> DenseOutput:
        """``dense [B, N]``, ``pooled [B, F*D]`` -> logits ``[B, T]``, aux loss 0, no diagnostics."""
        assert self.head is not None, "per-task layers replaced the head: call represent()"
        logits = self.head(self.represent(dense, pooled))
        return logits, logits.new_zeros(()), {}

    def flops(self) -> dict[str, FlopCount]:
        """Per-example FLOPs of each part (forward and exact backward)."""
        v, d = self.interaction.num_vectors, self.embedding_dim
        out = {"interaction": matmul(v, d, v)}
        if self.top is not None:
            out["top"] = linears(self.top)
        if self.head is not None:
            out["head"] = linear_module(self.head)
        if self.bottom is not None:
            out = {"bottom": linears(self.bottom, input_grad=False), **out}
        return out
