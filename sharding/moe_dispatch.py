"""Dropless expert-parallel token exchange: each rank sends exactly its routes, with split sizes.

A route is one (token, expert) pair: a token that goes to A experts has A routes. Experts are
placed contiguously over the G ranks of the EP group (rank r owns global experts
``[r·N, (r+1)·N)``, N = E / G). One dispatch:

1. sort this rank's routes by global expert (stable: a token's routes keep their order within an
   expert); sorted by expert is also sorted by destination rank;
2. count the routes per expert (``[E]``) and exchange the counts with one small all-to-all, so each
   rank learns how many rows every source sends to each of its N experts (``[G, N]``);
3. **read both count tables on the host, once** (``host_reads.read_sizes``): the all-to-all of rows
   needs its split sizes as Python ints. On a GPU this waits for the device; it is the price of
   sending no padding (dropless dispatch in MegaBlocks and torchtitan reads its split sizes the
   same way). It is counted, so a no-host-sync test can account for exactly these reads;
4. send the routes' rows with ``all_to_all_single`` and those split sizes (differentiable), regroup
   the received rows expert by expert, run the experts, send the outputs back the same way and
   restore the original route order (``combine``).

Nothing is dropped and nothing is padded: a rank sends ``R·W`` numbers for R routes of width W,
against ``E·C·M`` for DeepSpeed's capacity-padded ``MOELayer`` (capacity C = tokens per rank when
``capacity_factor`` is 0, width M shared by input and output). ``benchmarks/moe_dispatch.py``
measures both.

Tensor legend: S tokens on this rank, W row width, R routes on this rank, T rows received
(routes of other ranks' tokens to this rank's experts), E experts, G EP ranks, N local experts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from recscale.modules.host_reads import read_sizes
from recscale.sharding.moe_collectives import all_to_all_rows


@dataclass(frozen=True)
class DispatchPlan:
    """Where every route of one dispatch goes and comes back (built by ``DroplessDispatcher.plan``)."""

    order_R: torch.Tensor
    """This rank's routes sorted by global expert (indices into the route list), int64."""
    unsort_R: torch.Tensor
    """The inverse permutation: sorted position of each route."""
    send_splits: list[int]
    """Routes this rank sends to each EP rank (host ints)."""
    recv_splits: list[int]
    """Rows it receives from each EP rank (host ints)."""
    expert_rows: list[int] | None
    """Received rows per local expert, in local expert order (host ints, sums to T); None when not read
    (``plan(..., split_by_expert=False)`` on a group of one)."""
    regroup_T: torch.Tensor | None
    """Received position (by source rank, then local expert) of each expert-major row; None on a group
    of one (what it receives is its own routes, already expert-major)."""
    ungroup_T: torch.Tensor | None
    """The inverse permutation: expert-major position of each received row (None with ``regroup_T``)."""
    local_expert_T: torch.Tensor
    """Local expert of each expert-major row (for per-row gathers of expert weights), int64."""


class DroplessDispatcher:
    """Exchanges routes' rows with the ranks owning their experts, without capacity or padding.

    Args:
        num_experts: E, experts of this dispatch over the whole EP group.
        ep_size: G.
        group: the EP process group (DeepSpeed's, of this layer); unused when ``ep_size`` is 1.
        clock: where forward exchange times go: an object with ``wall_clock_breakdown``,
            ``time_falltoall`` and ``time_salltoall`` (the layer's DeepSpeed ``MOELayer``, whose own
            padded exchange keeps the same sums). With ``wall_clock_breakdown`` on (the trainer turns
            it on on CPU), dispatch milliseconds (count exchange included) add to the first, combine
            milliseconds to the second.

    Example (per rank, inside a forward)::

        dispatcher = DroplessDispatcher(8, 2, group)
        plan = dispatcher.plan(experts_R)                 # one host read
        rows_TW = dispatcher.dispatch(x_SW, token_R, plan)
        out_TW = run_local_experts(rows_TW.split(plan.expert_rows))
        y_RW = dispatcher.combine(out_TW, plan)           # in route order
    """

    def __init__(self, num_experts: int, ep_size: int, group: Any, clock: Any = None) -> None:
        if num_experts % ep_size:
            raise ValueError(f"sharding.ep_size: {ep_size} does not divide the {num_experts} experts of a dispatch")
        self.num_experts, self.ep_size, self.group = num_experts, ep_size, group
        self.local_experts = num_experts // ep_size
        self.clock = clock if clock is not None and ep_size > 1 else None

    def _timed(self) -> float | None:
        """A start time when forward exchanges are being timed (wall clock: right on CPU only)."""
        return time.perf_counter() if self.clock is not None and self.clock.wall_clock_breakdown else None

    def _add_ms(self, start: float | None, attribute: str) -> None:
        if start is not None:
            setattr(self.clock, attribute, getattr(self.clock, attribute) + (time.perf_counter() - start) * 1e3)

    def plan(self, experts_R: torch.Tensor, split_by_expert: bool = True) -> DispatchPlan:
        """Sort, count and exchange counts for routes to global experts ``experts_R`` ``[R]`` (collective).

        Args:
            experts_R: the global expert of each route.
            split_by_expert: the caller cuts the received rows expert by expert (``expert_rows``). On a
                group of one without it nothing needs the counts on the host: no host read at all.
        """
        g, n, e = self.ep_size, self.local_experts, self.num_experts
        order_R = torch.sort(experts_R, stable=True).indices
        unsort_R = _inverse(order_R)
        counts_E = torch.zeros(e, dtype=torch.int64, device=experts_R.device)
        counts_E.index_add_(0, experts_R, torch.ones_like(experts_R))
        if g == 1:  # everything stays here, already sorted by expert
            routes = [experts_R.numel()]
            rows = read_sizes(counts_E) if split_by_expert else None
            return DispatchPlan(order_R, unsort_R, routes, routes, rows, None, None, experts_R[order_R])
        start = self._timed()
        recv_GN = torch.empty_like(counts_E)
        dist.all_to_all_single(recv_GN, counts_E, group=self.group)
        sizes = read_sizes(torch.cat([counts_E, recv_GN]))  # the one host read of this dispatch
        self._add_ms(start, "time_falltoall")
        send, recv = sizes[:e], sizes[e:]
        send_splits = [sum(send[r * n : (r + 1) * n]) for r in range(g)]
        recv_splits = [sum(recv[r * n : (r + 1) * n]) for r in range(g)]
        expert_rows = [sum(recv[r * n + j] for r in range(g)) for j in range(n)]
        # the local expert of each received row: rows come by source rank, then by local expert; the
        # (rank, expert) block of row t is the first whose running count exceeds t (fixed shape, no read)
        position_T = torch.arange(sum(recv_splits), device=experts_R.device)
        local_T = torch.searchsorted(torch.cumsum(recv_GN, 0), position_T, right=True) % n
        regroup_T = torch.sort(local_T, stable=True).indices
        return DispatchPlan(
            order_R=order_R,
            unsort_R=unsort_R,
            send_splits=send_splits,
            recv_splits=recv_splits,
            expert_rows=expert_rows,
            regroup_T=regroup_T,
            ungroup_T=_inverse(regroup_T),
            local_expert_T=local_T[regroup_T],
        )

    def dispatch(self, x_SW: torch.Tensor, token_R: torch.Tensor, plan: DispatchPlan) -> torch.Tensor:
        """``[T, W]``: the rows of every route to this rank's experts, expert by expert (differentiable).

        Args:
            x_SW: this rank's tokens.
            token_R: the token of each route (routes in the order given to ``plan``).
            plan: this dispatch's plan.
        """
        rows_RW = x_SW[token_R[plan.order_R]]
        if self.ep_size > 1:
            start = self._timed()
            rows_RW = all_to_all_rows(rows_RW, plan.recv_splits, plan.send_splits, self.group)
            self._add_ms(start, "time_falltoall")
        return rows_RW if plan.regroup_T is None else rows_RW[plan.regroup_T]

    def combine(self, out_TV: torch.Tensor, plan: DispatchPlan) -> torch.Tensor:
        """``[R, V]``: the experts' outputs sent back to their tokens' ranks, in route order (differentiable)."""
        back_RV = out_TV if plan.ungroup_T is None else out_TV[plan.ungroup_T]
        if self.ep_size > 1:
            start = self._timed()
            back_RV = all_to_all_rows(back_RV, plan.send_splits, plan.recv_splits, self.group)
            self._add_ms(start, "time_salltoall")
        return back_RV[plan.unsort_R]

    def bytes_sent(self, plan: DispatchPlan, in_width: int, out_width: int, element_size: int, rank: int) -> int:
        """Bytes this rank puts on the wire for one dispatch and combine (its rows to other ranks only)."""
        dispatched = sum(s for r, s in enumerate(plan.send_splits) if r != rank) * in_width
        returned = sum(s for r, s in enumerate(plan.recv_splits) if r != rank) * out_width
        return (dispatched + returned) * element_size


def _inverse(permutation: torch.Tensor) -> torch.Tensor:
    """``inv`` with ``inv[permutation[i]] = i`` (no host read)."""
    inverse = torch.empty_like(permutation)
    inverse[permutation] = torch.arange(permutation.numel(), device=permutation.device)
    return inverse
