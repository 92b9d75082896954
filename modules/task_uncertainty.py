"""Task weights learned by homoscedastic uncertainty (Kendall, Gal and Cipolla, CVPR 2018).

Each task t learns a log variance ``s_t = log σ_t²`` (starting at 0, so every task starts at its fixed
weight) and the training loss becomes

    L = Σ_t w_t · (c_t · exp(-s_t) · L_t + s_t / 2),     c_t = 1 (bce),  1/2 (regression)

with ``w_t`` the normalised fixed weights (``model.tasks[*].weight``) and ``L_t`` the task's loss as
``model.task_normalization`` reduces it. These are the paper's two forms: a Gaussian likelihood
(``1/(2σ²) · L + log σ``) for a regression task and its classification form (``1/σ² · L + log σ``) for a
``bce`` task. At the optimum of ``s_t``, ``exp(-s_t) = 1 / (2 L_t)`` (bce) and ``1 / L_t`` (regression):
both give the task the effective weight ``w_t / (2 L_t)``, so tasks with a large loss are down-weighted.
``w_t`` multiplies the regulariser too: if it multiplied only the data term, the learned factor would
absorb it (``exp(-s_t) = 1 / (2 w_t L_t)``) and the fixed weight would have no effect.

The ``s_t`` are parameters of the dense arch (``TaskUncertainty`` wraps it), so the dense backend (DDP
or DeepSpeed) reduces their gradients, the dense optimizer trains them and the dense checkpoint holds
them. They reach the loss as T extra output columns (each row carries the same ``s``), after every
other output, which the task loss takes off (``TaskLoss``) and serving never reads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from recscale.modules.flops import FlopCount


class TaskUncertainty(nn.Module):
    """The dense arch with a learned log variance per task: its logits ``[B, H]`` -> ``[B, H + T]``.

    Args:
        dense: the dense arch (any ``dense(...) -> (logits, aux, diagnostics)``).
        task_names: the T tasks, in order; in training each step's diagnostics carry
            ``task_weight/<name>`` = ``exp(-s_t)``.
    """

    def __init__(self, dense: nn.Module, task_names: Sequence[str]) -> None:
        super().__init__()
        self.inner = dense
        self.task_names = list(task_names)
        self.log_variance = nn.Parameter(torch.zeros(len(self.task_names)))

    def forward(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """The inner arch's outputs with ``s`` appended to every row of its logits."""
        logits, aux, diagnostics = self.inner(*args, **kwargs)
        s = self.log_variance.to(logits.dtype).unsqueeze(0).expand(logits.shape[0], -1)
        if self.training:
            weights = torch.exp(-self.log_variance.detach().float())
            diagnostics = {**diagnostics, **{f"task_weight/{n}": weights[t] for t, n in enumerate(self.task_names)}}
        return torch.cat([logits, s], dim=1), aux, diagnostics

    def flops(self, seq_lengths: Mapping[str, Any] | None = None, executed: bool = False) -> dict[str, FlopCount]:
        """The inner arch's FLOPs (the weighting is a handful of scalar operations per step)."""
        if seq_lengths is None and not executed:
            counts: dict[str, FlopCount] = self.inner.flops()
        else:
            counts = self.inner.flops(seq_lengths=seq_lengths, executed=executed)
        return counts


def uncertainty_weighted(
    per_task_T: torch.Tensor, log_variance_T: torch.Tensor, weights_T: torch.Tensor, is_bce_T: torch.Tensor
) -> torch.Tensor:
    """``Σ_t w_t (c_t exp(-s_t) L_t + s_t / 2)`` (module docstring) of the per-task losses ``[T]``."""
    s = log_variance_T.float()
    scale = torch.where(is_bce_T, 1.0, 0.5)
    return (weights_T * (scale * torch.exp(-s) * per_task_T + s / 2)).sum()
