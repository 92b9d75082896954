"""Learning from a stale, biased teacher: an auxiliary distillation head and a student adapter.

A large teacher trained on every domain's traffic, and on older data, scores the student's rows
(``data.features.teacher``, its logits ``z_F``). Distilling into the served head directly moves what is
served towards the teacher's bias. ``model.teacher.head: auxiliary`` instead gives the student's shared
representation ``r`` (``[B, R]``, what its own head reads) more heads:

    served        ŷ_S  = head(r)                       learns from labels only
    distillation  ŷ_D  = W_D · g_β(r) + b_D            learns min(1, α σ(z_F))
    adapter       ŷ_A  = MLP_t(z_F)                    learns labels from the teacher's logit alone
    second head   ŷ_D2 = W_D2 · g_β(r) + b_D2          learns sg(σ(ŷ_A))

``g_β`` is the identity forward and multiplies the gradient by β backward (``model.teacher.grad_scale``),
so the distillation heads' pull on the shared representation can be tuned without changing their own
learning. The adapter sees only ``z_F`` and this data's fresh labels: it learns how today's labels relate
to a teacher trained on older days, and the second head distils that recalibrated probability (the
stop-gradient ``sg`` keeps the head from training the adapter). Only ``ŷ_S`` is served.

Everything trains in one step with the dense optimizer; the second head's target uses the adapter's value
before this step's update (a one-step lag against updating the adapter first).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from recscale.modules.flops import FlopCount, flop_counter, linear, linear_module
from recscale.modules.outputs import DenseOutput


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the incoming gradient times ``scale`` backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` unchanged, with its gradient multiplied by ``scale`` (no-op at 1)."""
    return x if scale == 1.0 else _ScaleGrad.apply(x, scale)


class StudentAdapter(nn.Module):
    """One small MLP per task on the teacher's logit alone: ``[B, T]`` -> ``[B, T]``.

    Task t: ``z -> Linear(1, h) -> ReLU -> Linear(h, 1)``, batched over tasks. Its input is data (no gradient).
    """

    def __init__(self, num_tasks: int, hidden: int) -> None:
        super().__init__()
        self.num_tasks = num_tasks
        self.hidden = hidden
        self.w1 = nn.Parameter(torch.empty(num_tasks, hidden).uniform_(-1.0, 1.0))  # fan-in 1, as nn.Linear
        self.b1 = nn.Parameter(torch.empty(num_tasks, hidden).uniform_(-1.0, 1.0))
        bound = 1.0 / math.sqrt(hidden)
        self.w2 = nn.Parameter(torch.empty(num_tasks, hidden).uniform_(-bound, bound))
        self.b2 = nn.Parameter(torch.empty(num_tasks).uniform_(-bound, bound))

    def forward(self, teacher_BT: torch.Tensor) -> torch.Tensor:
        """``teacher_BT [B, T]`` logits (NaN already zeroed) -> recalibrated logits ``[B, T]``."""
        hidden_BTH = torch.relu(teacher_BT.unsqueeze(2) * self.w1 + self.b1)
        return (hidden_BTH * self.w2).sum(dim=2) + self.b2

    def flops(self) -> FlopCount:
        """Per example: each task's two tiny layers (no gradient into the teacher's logit)."""
        per_task = linear(1, self.hidden, input_grad=False) + linear(self.hidden, 1)
        return FlopCount(per_task.forward * self.num_tasks, per_task.backward * self.num_tasks)


class DistilledDense(nn.Module):
    """A dense arch with ``represent``/``head`` plus the distillation heads (and adapter) above.

    Args:
        arch: the student's dense arch (``represent(dense, pooled) -> [B, R]``, ``head``, ``out_dim`` R).
        num_tasks: T, the tasks the teacher scores (one logit each).
        grad_scale: β of ``g_β``.
        adapter_hidden: > 0: add the adapter (that hidden width) and the second head; 0 = none.

    ``forward(dense, pooled, teacher=None)`` returns the arch's logits ``[B, H]`` without a teacher input
    (serving), else ``[B, H + T]`` (served, distillation) or ``[B, H + 3T]`` (served, distillation, second
    head, adapter); ``teacher [B, T]`` holds the teacher's logits, NaN where it scored nothing.
    """

    def __init__(self, arch: nn.Module, num_tasks: int, grad_scale: float = 1.0, adapter_hidden: int = 0) -> None:
        super().__init__()
        if not hasattr(arch, "represent") or getattr(arch, "head", None) is None:
            raise ValueError(
                f"model.teacher.head: auxiliary needs an arch with a representation before its head (dlrm, dcnv2); "
                f"{type(arch).__name__} has none"
            )
        self.arch = arch
        self.num_tasks = num_tasks
        self.grad_scale = grad_scale
        width: int = arch.out_dim
        self.distill = nn.Linear(width, num_tasks)
        self.second: nn.Linear | None = nn.Linear(width, num_tasks) if adapter_hidden else None
        self.adapter: StudentAdapter | None = StudentAdapter(num_tasks, adapter_hidden) if adapter_hidden else None

    def forward(self, dense: torch.Tensor, pooled: torch.Tensor, teacher: torch.Tensor | None = None) -> DenseOutput:
        """``dense [B, N]``, ``pooled [B, sum D]``, ``teacher [B, T]`` or None -> logits (class docstring)."""
        r = self.arch.represent(dense, pooled)
        served = self.arch.head(r)
        if teacher is None:
            return served, served.new_zeros(()), {}
        shared = scale_grad(r, self.grad_scale)
        parts = [served, self.distill(shared)]
        if self.second is not None and self.adapter is not None:
            parts += [self.second(shared), self.adapter(torch.nan_to_num(teacher.float(), nan=0.0).to(r.dtype))]
        return torch.cat(parts, dim=1), served.new_zeros(()), {}

    def flops(self) -> dict[str, FlopCount]:
        """The arch's parts plus the extra heads (what a training step runs)."""
        out = dict(flop_counter(self.arch).flops())
        out["distill_heads"] = linear_module(self.distill) + (
            linear_module(self.second) if self.second is not None else FlopCount()
        )
        if self.adapter is not None:
            out["adapter"] = self.adapter.flops()
        return out
