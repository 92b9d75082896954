"""Differentiable collectives for HiLoMoE under data and expert parallelism (torch.distributed only).

``gather_rows`` all-gathers the experts' router keys over the EP group; ``sum_across_ranks`` sums the
load-balance statistics over all ranks. Both backward passes are written so that the data-parallel
average of the gradients (1/world) is exactly the single-device gradient.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from recscale.modules.hilomoe.convert import moe_blocks


class _GatherRows(torch.autograd.Function):
    """All-gather rows over a group; backward sums the gradient over the group and keeps own rows."""

    @staticmethod
    def forward(ctx: Any, local: torch.Tensor, group: Any) -> torch.Tensor:
        world = dist.get_world_size(group)
        parts = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(parts, local.contiguous(), group=group)
        ctx.group, ctx.rank, ctx.rows = group, dist.get_rank(group), local.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        start = ctx.rank * ctx.rows
        return grad[start : start + ctx.rows], None


class _SumAcrossRanks(torch.autograd.Function):
    """All-reduce (sum) whose backward is an all-reduce (sum) of the gradients.

    Every rank's loss holds the same reduced value; the data-parallel average of the gradients
    (1/world) then gives exactly the gradient of the single-device loss.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        out = x.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def gather_rows(local: torch.Tensor, group: Any) -> torch.Tensor:
    """Rows of every rank of ``group`` in rank order (differentiable)."""
    out: torch.Tensor = _GatherRows.apply(local, group)
    return out


def sum_across_ranks(x: torch.Tensor, group: Any = None) -> torch.Tensor:
    """Sum of ``x`` over ``group`` (default: all ranks), differentiable."""
    out: torch.Tensor = _SumAcrossRanks.apply(x, group)
    return out


def install_global_balance_stats(dense: nn.Module, group: Any = None) -> None:
    """Make every HiLoMoE block (either backend) compute its balance loss over all ranks' tokens.

    Useful under DDP too: the balance loss then equals the single-device model's on the global batch.
    """
    for _, block in moe_blocks(dense):
        block.stats_reducer = lambda stats, g=group: sum_across_ranks(stats, g)
