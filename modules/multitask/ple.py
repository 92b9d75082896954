"""PLE: task-specific and shared experts over extraction levels; one level is CGC (Customized Gate Control).

Tang et al., "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL) Model for
Personalized Recommendations", RecSys 2020.

Each level keeps T task streams and one shared stream. Task k's experts read task k's stream and the
shared experts read the shared stream; task k's gate (on its stream) mixes its own experts and the shared
ones into its next stream. The shared gate (on the shared stream) makes the next shared stream; it mixes
every expert of the level (``SharedGate.ALL``, the paper) or only the shared experts
(``SharedGate.SHARED_ONLY``, FuxiCTR's variant), and the last level has none (nothing reads it). The
towers read the last level's task streams.

Shapes: B examples, D input width, T tasks, m_t experts per task, m_s shared experts, d expert width.
"""

from __future__ import annotations

from enum import Enum

import torch
from torch import nn

from recscale.modules.flops import FlopCount
from recscale.modules.multitask.experts import ExpertSet, TaskGate, mix, mix_flops


class SharedGate(str, Enum):
    """What the shared stream's gate mixes (see the module docstring)."""

    ALL = "all"
    SHARED_ONLY = "shared_only"


class ExtractionLevel(nn.Module):
    """One PLE level: ``(T task streams [B, D], shared stream [B, D])`` -> the next streams ``[B, d]``.

    Args:
        in_dim: D, the width of every input stream.
        num_tasks: T.
        task_experts: m_t experts per task.
        shared_experts: m_s shared experts.
        expert_widths: each expert's MLP widths (d = the last).
        gate_hidden: MLP widths before each gate's Linear.
        shared_gate: what the shared gate mixes; None: no shared gate (the last level).
        activation: of the MLPs.
        dropout: after each expert layer.
    """

    def __init__(
        self,
        in_dim: int,
        num_tasks: int,
        task_experts: int,
        shared_experts: int,
        expert_widths: list[int],
        gate_hidden: list[int] | None = None,
        shared_gate: SharedGate | None = SharedGate.ALL,
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if task_experts + shared_experts < 1:
            raise ValueError("a PLE level needs at least one expert per task stream (task or shared)")
        self.task_experts = nn.ModuleList(
            ExpertSet(in_dim, task_experts, expert_widths, activation, dropout) for _ in range(num_tasks)
        )
        self.shared_experts = ExpertSet(in_dim, shared_experts, expert_widths, activation, dropout)
        mixed = task_experts + shared_experts
        self.task_gates = nn.ModuleList(TaskGate(in_dim, mixed, gate_hidden, activation) for _ in range(num_tasks))
        self.shared_gate_kind = shared_gate
        self.shared_gate: TaskGate | None = None
        if shared_gate is not None:
            inputs = num_tasks * task_experts + shared_experts if shared_gate == SharedGate.ALL else shared_experts
            self.shared_gate = TaskGate(in_dim, inputs, gate_hidden, activation)
        self.out_dim = expert_widths[-1]

    def forward(
        self, task_streams: list[torch.Tensor], shared_stream: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """``(T x [B, D], [B, D])`` -> ``(T x [B, d], [B, d] or None)``."""
        shared_Bsd = self.shared_experts(shared_stream)
        own = [experts(x) for experts, x in zip(self.task_experts, task_streams)]
        outputs = [
            mix(gate(x), torch.cat([own_Bmd, shared_Bsd], dim=1))
            for gate, x, own_Bmd in zip(self.task_gates, task_streams, own)
        ]
        if self.shared_gate is None:
            return outputs, None
        pool = torch.cat([*own, shared_Bsd], dim=1) if self.shared_gate_kind == SharedGate.ALL else shared_Bsd
        return outputs, mix(self.shared_gate(shared_stream), pool)

    def flops(self, input_grad: bool = True) -> dict[str, FlopCount]:
        """Per-example FLOPs of the level's experts, gates and mixtures."""
        d = self.out_dim
        experts = self.shared_experts.flops(input_grad)
        for task in self.task_experts:
            experts = experts + task.flops(input_grad)
        gates, mixes = FlopCount(), FlopCount()
        for gate in self.task_gates:
            gates = gates + gate.flops(input_grad)
            mixes = mixes + mix_flops(gate.proj.out_features, d)
        if self.shared_gate is not None:
            gates = gates + self.shared_gate.flops(input_grad)
            mixes = mixes + mix_flops(self.shared_gate.proj.out_features, d)
        return {"experts": experts, "gates": gates, "mix": mixes}


class PLE(nn.Module):
    """``x [B, D]`` -> one ``[B, d]`` vector per task after ``num_levels`` extraction levels.

    Args are those of ``ExtractionLevel``, plus ``num_levels`` (1 = CGC). Every level has the same
    expert counts and widths; level l > 0 reads the d-wide streams of level l - 1.
    """

    def __init__(
        self,
        in_dim: int,
        num_tasks: int,
        num_levels: int,
        task_experts: int,
        shared_experts: int,
        expert_widths: list[int],
        gate_hidden: list[int] | None = None,
        shared_gate: SharedGate = SharedGate.ALL,
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_levels < 1:
            raise ValueError(f"PLE needs at least one level, got {num_levels}")
        widths = [in_dim] + [expert_widths[-1]] * (num_levels - 1)
        self.levels = nn.ModuleList(
            ExtractionLevel(
                widths[level],
                num_tasks,
                task_experts,
                shared_experts,
                expert_widths,
                gate_hidden,
                shared_gate if level < num_levels - 1 else None,
                activation,
                dropout,
            )
            for level in range(num_levels)
        )
        self.num_tasks = num_tasks
        self.out_dim = expert_widths[-1]

    def forward(self, x_BD: torch.Tensor) -> list[torch.Tensor]:
        """``[B, D]`` -> T tensors ``[B, d]``."""
        tasks: list[torch.Tensor] = [x_BD] * self.num_tasks
        shared: torch.Tensor | None = x_BD
        for level in self.levels:
            assert shared is not None, "only the last level has no shared gate"
            tasks, shared = level(tasks, shared)
        return tasks

    def flops(self, input_grad: bool = True) -> dict[str, FlopCount]:
        """Per-example FLOPs summed over the levels, by part."""
        out = {"experts": FlopCount(), "gates": FlopCount(), "mix": FlopCount()}
        for level in self.levels:
            for part, count in level.flops(input_grad).items():
                out[part] = out[part] + count
        return out
