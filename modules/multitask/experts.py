"""Experts and gates shared by MMoE and PLE.

Shapes: B examples, D input width, n experts, d expert output width.
"""

from __future__ import annotations

import torch
from torch import nn

from recscale.modules.flops import FlopCount, linear_module, linears, matmul
from recscale.modules.mlp import MLP


class ExpertSet(nn.Module):
    """``n`` MLP experts of the same widths on one input: ``[B, D] -> [B, n, d]``.

    Args:
        in_dim: D.
        num_experts: n (0 = none: the output is ``[B, 0, d]``).
        widths: each expert's layer widths (d = the last); every layer has the activation, as a hidden
            layer of the task's tower would.
        activation: the MLPs' activation.
        dropout: dropout after each activation.
    """

    def __init__(
        self, in_dim: int, num_experts: int, widths: list[int], activation: str = "relu", dropout: float = 0.0
    ):
        super().__init__()
        if not widths:
            raise ValueError("expert widths: expected at least one layer")
        self.experts = nn.ModuleList(MLP(in_dim, widths, activation, dropout) for _ in range(num_experts))
        self.out_dim = widths[-1]

    def __len__(self) -> int:
        return len(self.experts)

    def forward(self, x_BD: torch.Tensor) -> torch.Tensor:
        """``[B, D] -> [B, n, d]``."""
        if not len(self.experts):
            return x_BD.new_zeros(x_BD.shape[0], 0, self.out_dim)
        return torch.stack([expert(x_BD) for expert in self.experts], dim=1)

    def flops(self, input_grad: bool = True) -> FlopCount:
        """Per-example FLOPs of every expert."""
        total = FlopCount()
        for expert in self.experts:
            total = total + linears(expert, input_grad)
        return total


class TaskGate(nn.Module):
    """Softmax weights over ``n`` experts from the gate's input: ``[B, D] -> [B, n]``.

    ``Linear -> softmax`` by default; ``hidden`` widths put an MLP before the Linear (FuxiCTR's gates).
    """

    def __init__(self, in_dim: int, num_experts: int, hidden: list[int] | None = None, activation: str = "relu"):
        super().__init__()
        self.hidden = MLP(in_dim, hidden, activation) if hidden else None
        self.proj = nn.Linear(self.hidden.out_dim if self.hidden is not None else in_dim, num_experts)

    def forward(self, x_BD: torch.Tensor) -> torch.Tensor:
        """``[B, D] -> [B, n]``, rows summing to 1."""
        h = self.hidden(x_BD) if self.hidden is not None else x_BD
        return torch.softmax(self.proj(h), dim=-1)

    def flops(self, input_grad: bool = True) -> FlopCount:
        """Per-example FLOPs of the gate's layers."""
        if self.hidden is None:
            return linear_module(self.proj, input_grad)
        return linears(self.hidden, input_grad) + linear_module(self.proj)


def mix(weights_Bn: torch.Tensor, experts_Bnd: torch.Tensor) -> torch.Tensor:
    """The gated sum ``Σ_i w_i · E_i``: ``[B, n], [B, n, d] -> [B, d]`` (one batched matmul)."""
    return torch.bmm(weights_Bn.unsqueeze(1), experts_Bnd).squeeze(1)


def mix_flops(num_experts: int, dim: int) -> FlopCount:
    """FLOPs of ``mix`` per example; both operands need gradients."""
    return matmul(1, num_experts, dim)
