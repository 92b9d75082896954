"""A dense arch as the shared bottom of per-task layers: shared-bottom, MMoE or PLE, then a tower per task.

The arch's own head (one Linear to T logits) is removed; its representation ``h [B, H]`` (``represent``)
feeds ``model.multitask.structure``:

    shared_bottom:  y_k = head_k(tower_k(h))
    mmoe / ple:     y_k = head_k(tower_k(f^k(h)))     f^k: task k's mixture (``MMoE``, ``PLE``)

With ``expert_input: interaction`` the experts read the arch's feature interactions ``z [B, Z]`` (``interact``:
DCN-V2's cross output, DLRM's dot products) instead, and the arch's shared top / deep MLP is removed: the
experts are the bottom networks, as in the MMoE and PLE papers.

Shapes: B examples, H the bottom's width, Z its interaction width, T tasks, d the experts' width.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from recscale.configs.schema import JobConfig, MultiTaskConfig
from recscale.modules.flops import FlopCount, linear_module, linears
from recscale.modules.mlp import MLP
from recscale.modules.multitask.mmoe import MMoE
from recscale.modules.multitask.ple import PLE, SharedGate
from recscale.modules.outputs import DenseOutput

BOTTOMS = ("dlrm", "dcnv2")
"""Arches that can be the shared bottom: they expose ``represent`` and a removable ``head``."""


class MultiTaskDense(nn.Module):
    """``dense [B, N]``, ``pooled [B, P]`` -> logits ``[B, T]`` through per-task layers over ``bottom``.

    Args:
        bottom: a dense arch with ``represent(dense, pooled) -> [B, H]``, ``out_dim`` H and ``head``
            (removed here) and ``flops()``.
        cfg: the ``model.multitask`` section.
        num_tasks: T.
        activation: of the experts, gates and towers.
        dropout: after the experts' and towers' layers.
    """

    def __init__(self, bottom: Any, cfg: MultiTaskConfig, num_tasks: int, activation: str, dropout: float) -> None:
        super().__init__()
        bottom.head = None  # its parameters must not exist: nothing would train them (DDP refuses unused ones)
        self.on_interaction = cfg.expert_input == "interaction" and cfg.structure in ("mmoe", "ple")
        if self.on_interaction:  # the experts replace the shared MLP, which would otherwise go untrained
            for name in ("deep", "top"):
                if hasattr(bottom, name):
                    setattr(bottom, name, None)
        self.bottom = bottom
        width = bottom.interaction_dim if self.on_interaction else bottom.out_dim
        self.layer: MMoE | PLE | None = None
        if cfg.structure == "mmoe":
            self.layer = MMoE(
                width, num_tasks, cfg.num_experts, cfg.expert_widths, cfg.gate_hidden, activation, dropout
            )
        elif cfg.structure == "ple":
            self.layer = PLE(
                width,
                num_tasks,
                cfg.num_levels,
                cfg.task_experts,
                cfg.shared_experts,
                cfg.expert_widths,
                cfg.gate_hidden,
                SharedGate(cfg.shared_gate),
                activation,
                dropout,
            )
        tower_in = self.layer.out_dim if self.layer is not None else width
        self.towers = nn.ModuleList(MLP(tower_in, cfg.tower, activation, dropout) for _ in range(num_tasks))
        self.heads = nn.ModuleList(nn.Linear(cfg.tower[-1] if cfg.tower else tower_in, 1) for _ in range(num_tasks))
        self.num_tasks = num_tasks

    def forward(self, dense: torch.Tensor, pooled: torch.Tensor) -> DenseOutput:
        """Logits ``[B, T]``, aux loss 0, diagnostics: each task's mean largest gate weight (MMoE / PLE)."""
        h = self.bottom.interact(dense, pooled) if self.on_interaction else self.bottom.represent(dense, pooled)
        per_task = self.layer(h) if self.layer is not None else [h] * self.num_tasks
        logits = torch.cat([head(tower(x)) for head, tower, x in zip(self.heads, self.towers, per_task)], dim=1)
        diagnostics: dict[str, torch.Tensor] = {}
        if isinstance(self.layer, MMoE):
            for k, weights in enumerate(self.layer.last_weights):
                diagnostics[f"mmoe/max_gate/task{k + 1}"] = weights.detach().max(dim=-1).values.mean()
        return logits, logits.new_zeros(()), diagnostics

    def flops(self) -> dict[str, FlopCount]:
        """The bottom's parts (without its head), the per-task layer's parts, the towers and heads."""
        out = {f"bottom/{part}": count for part, count in self.bottom.flops().items()}
        if self.layer is not None:
            out.update({f"{type(self.layer).__name__.lower()}/{k}": v for k, v in self.layer.flops().items()})
        towers = FlopCount()
        for tower, head in zip(self.towers, self.heads):
            towers = towers + linears(tower) + linear_module(head)
        out["towers"] = towers
        return out


def wrap_multitask(
    dense: nn.Module, cfg: MultiTaskConfig, num_tasks: int, activation: str, dropout: float
) -> nn.Module:
    """``dense`` as is (``structure: none``) or as the shared bottom of ``MultiTaskDense``."""
    if cfg.structure == "none":
        return dense
    return MultiTaskDense(dense, cfg, num_tasks, activation, dropout)


def check_multitask(cfg: JobConfig) -> list[str]:
    """Problems of ``model.multitask``, each naming its key."""
    m = cfg.model.multitask
    if m.structure == "none":
        return []
    out = []
    if cfg.model.arch not in BOTTOMS:
        out.append(
            f"model.multitask.structure: {m.structure} runs over {' or '.join(BOTTOMS)} as the shared bottom, "
            f"not {cfg.model.arch!r}"
        )
    if m.structure in ("mmoe", "ple") and (not m.expert_widths or min(m.expert_widths) < 1):
        out.append(f"model.multitask.expert_widths: expected positive widths, got {m.expert_widths}")
    if m.structure == "mmoe" and m.num_experts < 1:
        out.append(f"model.multitask.num_experts: expected at least 1, got {m.num_experts}")
    if m.structure == "ple":
        if m.num_levels < 1:
            out.append(f"model.multitask.num_levels: expected at least 1, got {m.num_levels}")
        if m.task_experts < 0 or m.shared_experts < 0 or m.task_experts + m.shared_experts < 1:
            out.append(
                "model.multitask.task_experts / shared_experts: expected >= 0 each and at least one expert, "
                f"got {m.task_experts} and {m.shared_experts}"
            )
    if m.expert_input == "interaction" and m.structure == "shared_bottom":
        out.append(
            "model.multitask.expert_input: interaction needs experts (structure mmoe or ple); shared_bottom's "
            "towers read the arch's representation (expected expert_input: representation with shared_bottom)"
        )
    if any(w < 1 for w in m.tower + m.gate_hidden):
        out.append(f"model.multitask.tower / gate_hidden: expected positive widths, got {m.tower} / {m.gate_hidden}")
    return out
