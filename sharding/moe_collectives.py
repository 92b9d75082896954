"""Differentiable collectives for MoE layers under data and expert parallelism (torch.distributed only).

``gather_rows`` all-gathers HiLoMoE's router keys over the EP group; ``sum_across_ranks`` sums the
load-balance statistics over all ranks; ``all_to_all_rows`` exchanges rows with per-rank split sizes
(the dropless expert dispatch, ``moe_dispatch.py``). The backward passes are written so that the
data-parallel average of the gradients (1/world) is exactly the single-device gradient.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from recscale.modules.hilomoe.convert import moe_blocks
from recscale.modules.kunlun.mowe import MixtureOfWukongExperts


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


class _AllToAllRows(torch.autograd.Function):
    """``all_to_all_single`` with split sizes; backward sends the gradients back the same way."""

    @staticmethod
    def forward(
        ctx: Any, rows: torch.Tensor, recv_splits: list[int], send_splits: list[int], group: Any
    ) -> torch.Tensor:
        ctx.recv_splits, ctx.send_splits, ctx.group = recv_splits, send_splits, group
        out = rows.new_empty((sum(recv_splits), *rows.shape[1:]))
        dist.all_to_all_single(out, rows.contiguous(), recv_splits, send_splits, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        out = grad.new_empty((sum(ctx.send_splits), *grad.shape[1:]))
        dist.all_to_all_single(out, grad.contiguous(), ctx.send_splits, ctx.recv_splits, group=ctx.group)
        return out, None, None, None


def all_to_all_rows(rows: torch.Tensor, recv_splits: list[int], send_splits: list[int], group: Any) -> torch.Tensor:
    """Send ``rows[...]`` in consecutive chunks of ``send_splits`` to the ranks of ``group``, receive ``recv_splits``.

    Differentiable. ``rows`` is ``[sum(send_splits), ...]``; the result ``[sum(recv_splits), ...]`` holds
    what each rank sent this one, in rank order.
    """
    out: torch.Tensor = _AllToAllRows.apply(rows, recv_splits, send_splits, group)
    return out


def gather_rows(local: torch.Tensor, group: Any) -> torch.Tensor:
    """Rows of every rank of ``group`` in rank order (differentiable)."""
    out: torch.Tensor = _GatherRows.apply(local, group)
    return out


def sum_across_ranks(x: torch.Tensor, group: Any = None) -> torch.Tensor:
    """Sum of ``x`` over ``group`` (default: all ranks), differentiable."""
    out: torch.Tensor = _SumAcrossRanks.apply(x, group)
    return out


def install_global_balance_stats(dense: nn.Module, group: Any = None) -> None:
    """Make every HiLoMoE block and routed MoWE (any backend) compute its balance loss over all ranks' tokens.

    Useful under DDP too: the balance loss then equals the single-device model's on the global batch.
    """
    for _, block in moe_blocks(dense):
        block.stats_reducer = lambda stats, g=group: sum_across_ranks(stats, g)
    for module in dense.modules():
        if isinstance(module, MixtureOfWukongExperts) and module.router is not None:
            module.stats_reducer = lambda stats, g=group: sum_across_ranks(stats, g)
