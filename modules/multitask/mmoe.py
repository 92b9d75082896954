"""MMoE: every expert is shared, each task mixes them with its own gate.

Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts", KDD 2018:

    g^k(x) = softmax(W_k x),   f^k(x) = Σ_i g^k_i(x) · E_i(x),   y_k = tower_k(f^k(x))

Shapes: B examples, D input width, n experts, d expert width, T tasks.
"""

from __future__ import annotations

import torch
from torch import nn

from recscale.modules.flops import FlopCount
from recscale.modules.multitask.experts import ExpertSet, TaskGate, mix, mix_flops


class MMoE(nn.Module):
    """``x [B, D]`` -> one ``[B, d]`` mixture per task.

    Args:
        in_dim: D.
        num_tasks: T (one gate each).
        num_experts: n shared experts.
        expert_widths: each expert's MLP widths (d = the last).
        gate_hidden: MLP widths before each gate's Linear (empty: ``Linear -> softmax``).
        activation: of the experts and gate MLPs.
        dropout: after each expert layer.
    """

    def __init__(
        self,
        in_dim: int,
        num_tasks: int,
        num_experts: int,
        expert_widths: list[int],
        gate_hidden: list[int] | None = None,
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_tasks < 1 or num_experts < 1:
            raise ValueError(f"MMoE needs at least one task and one expert, got {num_tasks} and {num_experts}")
        self.experts = ExpertSet(in_dim, num_experts, expert_widths, activation, dropout)
        self.gates = nn.ModuleList(TaskGate(in_dim, num_experts, gate_hidden, activation) for _ in range(num_tasks))
        self.out_dim = self.experts.out_dim
        self.last_weights: list[torch.Tensor] = []
        """Each task's gate weights ``[B, n]`` of the last forward (for diagnostics; not detached)."""

    def forward(self, x_BD: torch.Tensor) -> list[torch.Tensor]:
        """``[B, D]`` -> T tensors ``[B, d]``."""
        experts_Bnd = self.experts(x_BD)
        self.last_weights = [gate(x_BD) for gate in self.gates]
        return [mix(w_Bn, experts_Bnd) for w_Bn in self.last_weights]

    def flops(self, input_grad: bool = True) -> dict[str, FlopCount]:
        """Per-example FLOPs: the experts (once), the gates, the T mixtures."""
        gates = FlopCount()
        for gate in self.gates:
            gates = gates + gate.flops(input_grad)
        n, d = len(self.experts), self.out_dim
        return {
            "experts": self.experts.flops(input_grad),
            "gates": gates,
            "mix": mix_flops(n, d).scaled(len(self.gates)),
        }
