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

When the adapter trains (``model.teacher.adapter_update``):

- ``joint``: everything trains in one step with the dense optimizer; the second head's target uses the
  adapter's value before this step's update (a one-step lag).
- ``before``: the adapter has its own Adam (``adapter_lr``) and takes its step on the batch first, inside
  the forward pass; ``ŷ_A`` is then recomputed without gradient and the student trains on it. Under data
  parallelism the sharding layer gives it a ``grad_reducer`` that averages its gradient over the ranks, so
  every rank's adapter stays the same; its Adam moments are buffers, so checkpoints carry them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from recscale.modules.flops import FlopCount, flop_counter, linear, linear_module
from recscale.modules.outputs import DenseOutput

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
"""The adapter's own Adam (``adapter_update: before``): torch's defaults."""


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

    Args:
        num_tasks: T.
        hidden: h.
        own_lr: > 0: the adapter trains itself (``own_step``) with its own Adam at this rate, and its
            parameters take no gradient from the model's loss (``requires_grad`` off, so data-parallel
            wrappers and the dense optimizer leave them alone); 0: the dense optimizer trains it.

    ``grad_reducer`` (None: one process) maps this rank's flat gradient to the ranks' mean; the sharding
    layer sets it (``sharding/apply.py``), keeping collectives out of the model code.
    """

    PARAMS = ("w1", "b1", "w2", "b2")

    def __init__(self, num_tasks: int, hidden: int, own_lr: float = 0.0) -> None:
        super().__init__()
        self.num_tasks = num_tasks
        self.hidden = hidden
        self.own_lr = own_lr
        self.grad_reducer: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.w1 = nn.Parameter(torch.empty(num_tasks, hidden).uniform_(-1.0, 1.0))  # fan-in 1, as nn.Linear
        self.b1 = nn.Parameter(torch.empty(num_tasks, hidden).uniform_(-1.0, 1.0))
        bound = 1.0 / math.sqrt(hidden)
        self.w2 = nn.Parameter(torch.empty(num_tasks, hidden).uniform_(-bound, bound))
        self.b2 = nn.Parameter(torch.empty(num_tasks).uniform_(-bound, bound))
        if own_lr > 0:
            self.register_buffer("adam_steps", torch.zeros((), dtype=torch.int64))
            for name in self.PARAMS:
                p = getattr(self, name)
                p.requires_grad_(False)
                self.register_buffer(f"exp_avg_{name}", torch.zeros_like(p))
                self.register_buffer(f"exp_avg_sq_{name}", torch.zeros_like(p))

    def forward(self, teacher_BT: torch.Tensor) -> torch.Tensor:
        """``teacher_BT [B, T]`` logits (NaN already zeroed) -> recalibrated logits ``[B, T]``."""
        return self._logits(teacher_BT, self.w1, self.b1, self.w2, self.b2)

    @staticmethod
    def _logits(
        teacher_BT: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor
    ) -> torch.Tensor:
        hidden_BTH = torch.relu(teacher_BT.unsqueeze(2) * w1 + b1)
        return (hidden_BTH * w2).sum(dim=2) + b2

    def own_step(self, teacher_BT: torch.Tensor, labels_BT: torch.Tensor, row_weights_BT: torch.Tensor) -> None:
        """One Adam step on ``Σ w · BCE(ŷ_A, y)`` of this batch, the gradient averaged over the ranks.

        ``teacher_BT`` are the logits (NaN zeroed), ``row_weights_BT`` each row's weight in its task's mean
        (0 where the teacher scored nothing or the task does not apply). With a ``grad_reducer`` every rank
        must call it at the same step (it is a collective); it runs in fp32 whatever the compute dtype.
        """
        params = [getattr(self, n).detach().float().requires_grad_() for n in self.PARAMS]
        with torch.enable_grad(), torch.autocast(teacher_BT.device.type, enabled=False):
            logits_BT = self._logits(teacher_BT.float(), *params)
            per_BT = F.binary_cross_entropy_with_logits(logits_BT, labels_BT.float(), reduction="none")
            grads = torch.autograd.grad((per_BT * row_weights_BT.float()).sum(), params)
        flat = torch.cat([g.reshape(-1) for g in grads])
        if self.grad_reducer is not None:
            flat = self.grad_reducer(flat)
        beta1, beta2 = ADAM_BETAS
        with torch.no_grad():
            self.adam_steps += 1
            steps = self.adam_steps.double()  # bias corrections on the device: no host read in the step
            correction1, correction2 = (1 - beta1**steps).float(), (1 - beta2**steps).float()
            for name, grad in zip(self.PARAMS, flat.split([p.numel() for p in params])):
                p = getattr(self, name)
                m, v = getattr(self, f"exp_avg_{name}"), getattr(self, f"exp_avg_sq_{name}")
                grad = grad.view_as(p).to(m.dtype)
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                update = self.own_lr * (m / correction1) / ((v / correction2).sqrt() + ADAM_EPS)
                p.sub_(update.to(p.dtype))

    def flops(self) -> FlopCount:
        """Per example: each task's two tiny layers (no gradient into the teacher's logit).

        Trained by its own step, it runs forward twice (the step, then the value the student learns).
        """
        per_task = linear(1, self.hidden, input_grad=False) + linear(self.hidden, 1)
        forward = per_task.forward * self.num_tasks
        if self.own_lr > 0:
            return FlopCount(2 * forward, per_task.backward * self.num_tasks)
        return FlopCount(forward, per_task.backward * self.num_tasks)


class DistilledDense(nn.Module):
    """A dense arch with ``represent``/``head`` plus the distillation heads (and adapter) above.

    Args:
        arch: the student's dense arch (``represent(dense, pooled) -> [B, R]``, ``head``, ``out_dim`` R).
        num_tasks: T, the tasks the teacher scores (one logit each).
        grad_scale: β of ``g_β``.
        adapter_hidden: > 0: add the adapter (that hidden width) and the second head; 0 = none.
        adapter_lr: > 0: the adapter steps itself first with its own Adam at this rate
            (``adapter_update: before``); 0: the dense optimizer trains it with everything else.

    ``forward(dense, pooled, teacher=None, adapter_target=None)`` returns the arch's logits ``[B, H]``
    without a teacher input (serving), else ``[B, H + T]`` (served, distillation) or ``[B, H + 3T]`` (served,
    distillation, second head, adapter); ``teacher [B, T]`` holds the teacher's logits, NaN where it scored
    nothing. ``adapter_target`` (training, own-step adapter): ``(labels [B, T], row weights [B, T])`` of the
    adapter's step (``TaskLoss.adapter_row_weights``), taken before the adapter's logits are computed.
    """

    def __init__(
        self, arch: nn.Module, num_tasks: int, grad_scale: float = 1.0, adapter_hidden: int = 0, adapter_lr: float = 0.0
    ) -> None:
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
        self.adapter: StudentAdapter | None = (
            StudentAdapter(num_tasks, adapter_hidden, adapter_lr) if adapter_hidden else None
        )

    def forward(
        self,
        dense: torch.Tensor,
        pooled: torch.Tensor,
        teacher: torch.Tensor | None = None,
        adapter_target: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> DenseOutput:
        """``dense [B, N]``, ``pooled [B, sum D]``, ``teacher [B, T]`` or None -> logits (class docstring)."""
        r = self.arch.represent(dense, pooled)
        served = self.arch.head(r)
        if teacher is None:
            return served, served.new_zeros(()), {}
        shared = scale_grad(r, self.grad_scale)
        parts = [served, self.distill(shared)]
        if self.second is not None and self.adapter is not None:
            z_BT = torch.nan_to_num(teacher.float(), nan=0.0)
            if adapter_target is not None and self.training and self.adapter.own_lr > 0:
                self.adapter.own_step(z_BT, *adapter_target)
            parts += [self.second(shared), self.adapter(z_BT.to(r.dtype))]
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
