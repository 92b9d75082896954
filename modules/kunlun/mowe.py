"""Mixture of Wukong Experts (MoWE): Kunlun's non-sequence interaction module, split into experts.

The interaction input ``[X_sum ‖ summaries]`` (I tokens) becomes n output tokens. Each expert is a
stack of ``WukongLayer``s (``modules/wukong``). How tokens reach experts is not in the sources
(the paper says only "each on a partition of the tokens"), so it is configurable
(``model.kunlun.mowe.partition``):

- ``strided``: expert e reads tokens e, e + E, e + 2E, ... (each expert sees X_sum and summaries);
- ``contiguous``: expert e reads the e-th of E consecutive chunks;
  in both, expert e emits its share n_e of the n output tokens, and the shares are concatenated.
  Every expert runs on every example: no router, no load balance, FLOPs = sum of the experts.
- ``routed``: a linear router on the mean input token picks ``top_k`` experts per example (softmax
  weights renormalised over the chosen ones); each chosen expert reads all I tokens and emits all n;
  outputs are mixed by the weights. A Switch load-balance loss ``E · Σ_e f_e P_e`` is the aux loss.

How the routed experts run on one device (``model.kunlun.mowe.expert_compute``):

- ``dense`` (default): every expert runs on the whole batch and off-route outputs get weight 0.
  No host synchronisation (every shape is fixed), E / top_k times the active expert FLOPs;
- ``sorted``: routes are sorted by expert (a stable sort keeps each expert's examples in batch
  order) and each expert runs on its own rows only: active FLOPs, bitwise equal to a per-expert
  ``nonzero`` loop, but the E row counts are read on the host once per layer (``host_reads``).

Backends: this module is ``MoEBackend.REFERENCE`` (all experts on this device). Under
``sharding.ep_size > 1`` ``recscale.sharding.kunlun_ep`` swaps in ``ExpertParallelMoWE``, a subclass
that keeps the router and the balance loss and sends each example's tokens to the rank of its
experts (docs/models/kunlun.md §"MoWE and expert parallelism").

Legend: B batch, I input tokens, n output tokens, D token width, E experts, K routes per example (top_k).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, cast

import torch
from torch import nn

from recscale.modules.flops import FlopCount, linear, total
from recscale.modules.hilomoe.layer import MoEBackend
from recscale.modules.host_reads import read_sizes
from recscale.modules.wukong import WukongLayer

StatsReducer = Callable[[torch.Tensor], torch.Tensor]
"""Sums the balance statistics over a wider batch (all data-parallel ranks); identity if unset."""


@dataclass(frozen=True)
class MoWEOptions:
    """Settings of one MoWE module (resolved from ``model.kunlun.mowe``)."""

    num_experts: int = 2
    partition: str = "strided"
    top_k: int = 1
    num_layers: int = 1
    fm_rank: int = 8
    fmb_mlp: list[int] = field(default_factory=lambda: [128])
    load_balance_weight: float = 0.01
    activation: str = "relu"
    expert_compute: str = "dense"


class Routes(NamedTuple):
    """The router's decision for a batch (``routed`` partition)."""

    probs_BE: torch.Tensor
    """Router softmax over all experts, float32."""
    experts_BK: torch.Tensor
    """The top_k experts of each example, int64, best first."""
    weights_BK: torch.Tensor
    """Their mixing weights (renormalised over the chosen ones), input dtype."""


def split_sizes(total_size: int, parts: int) -> list[int]:
    """``total_size`` split into ``parts`` near-equal sizes, larger ones first."""
    base, extra = divmod(total_size, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def partition_index(num_tokens: int, num_experts: int, partition: str) -> list[list[int]]:
    """Input token indices of each expert for ``strided`` and ``contiguous`` partitions."""
    if partition == "strided":
        return [list(range(e, num_tokens, num_experts)) for e in range(num_experts)]
    out, start = [], 0
    for size in split_sizes(num_tokens, num_experts):
        out.append(list(range(start, start + size)))
        start += size
    return out


class WukongExpert(nn.Sequential):
    """``num_layers`` Wukong layers: ``[B, I_e, D] -> [B, n_e, D]`` (FMB and LCB share n_e, FMB rounding up)."""

    def __init__(self, num_in: int, num_out: int, dim: int, opts: MoWEOptions) -> None:
        fmb = (num_out + 1) // 2
        layers = [
            WukongLayer(
                num_tokens=num_in if i == 0 else num_out,
                dim=dim,
                num_fmb_tokens=fmb,
                num_lcb_tokens=num_out - fmb,
                fm_rank=opts.fm_rank,
                fmb_mlp=list(opts.fmb_mlp),
                activation=opts.activation,
            )
            for i in range(opts.num_layers)
        ]
        super().__init__(*layers)

    def flops(self) -> FlopCount:
        """Per-example FLOPs of the whole expert (forward and exact backward)."""
        return sum((total(cast(WukongLayer, layer).flops()) for layer in self), FlopCount())


class MixtureOfWukongExperts(nn.Module):
    """MoWE: ``[B, I, D] -> ([B, n, D], aux loss, diagnostics)``.

    Args:
        num_in: I.
        num_out: n.
        dim: D.
        opts: experts, partition rule, Wukong sizes, how routed experts run.
    """

    backend = MoEBackend.REFERENCE

    def __init__(self, num_in: int, num_out: int, dim: int, opts: MoWEOptions) -> None:
        super().__init__()
        e = opts.num_experts
        if opts.partition not in ("strided", "contiguous", "routed"):
            raise ValueError(f"model.kunlun.mowe.partition: unknown {opts.partition!r}")
        if opts.expert_compute not in ("dense", "sorted"):
            raise ValueError(f"model.kunlun.mowe.expert_compute: expected dense or sorted, got {opts.expert_compute!r}")
        if e < 1:
            raise ValueError(f"model.kunlun.mowe.num_experts: expected >= 1, got {e}")
        self.opts = opts
        self.num_in, self.num_out, self.dim = num_in, num_out, dim
        self.num_experts = e
        self.stats_reducer: StatsReducer | None = None
        """Sums the balance statistics over all ranks' examples; set by data-parallel wrappers."""
        if opts.partition == "routed":
            if not 1 <= opts.top_k <= e:
                raise ValueError(f"model.kunlun.mowe.top_k: expected 1..{e}, got {opts.top_k}")
            self.index: list[list[int]] = []
            self.out_sizes = [num_out] * e
            self.router: nn.Linear | None = nn.Linear(dim, e)
            self.experts = nn.ModuleList(WukongExpert(num_in, num_out, dim, opts) for _ in range(e))
        else:
            if e > min(num_in, num_out):
                raise ValueError(
                    f"model.kunlun.mowe.num_experts: {e} experts need at least {e} input and output tokens, "
                    f"got {num_in} in and {num_out} out"
                )
            self.index = partition_index(num_in, e, opts.partition)
            self.out_sizes = split_sizes(num_out, e)
            self.router = None
            self.experts = nn.ModuleList(
                WukongExpert(len(idx), n_e, dim, opts) for idx, n_e in zip(self.index, self.out_sizes)
            )

    def forward(self, x_BID: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Output tokens, aux loss (load balance for ``routed``, else 0), expert-load diagnostics."""
        if self.router is None:
            parts = [expert(self._select(x_BID, e)) for e, expert in enumerate(self.experts)]
            return torch.cat(parts, dim=1), x_BID.new_zeros(()), {}
        routes = self.route(x_BID)
        out_BnD = self.expert_term(x_BID, routes)
        aux, diagnostics = self.balance_loss(routes)
        return out_BnD, aux.to(x_BID.dtype), diagnostics

    def _select(self, x_BID: torch.Tensor, e: int) -> torch.Tensor:
        if self.opts.partition == "strided":
            return x_BID[:, e :: self.num_experts]
        idx = self.index[e]
        return x_BID[:, idx[0] : idx[-1] + 1]

    # -- routed ------------------------------------------------------------------------------------

    def route(self, x_BID: torch.Tensor) -> Routes:
        """The router on the mean input token: probabilities, the top_k experts and their weights."""
        assert self.router is not None, "only the routed partition has a router"
        probs_BE = torch.softmax(self.router(x_BID.mean(dim=1)).float(), dim=-1)
        top_p_BK, experts_BK = probs_BE.topk(self.opts.top_k, dim=-1)
        weights_BK = (top_p_BK / top_p_BK.sum(dim=-1, keepdim=True)).to(x_BID.dtype)
        return Routes(probs_BE, experts_BK, weights_BK)

    def expert_term(self, x_BID: torch.Tensor, routes: Routes) -> torch.Tensor:
        """``[B, n, D]``: Σ over each example's routes of weight x expert(its tokens); all experts are local."""
        if self.opts.expert_compute == "sorted":
            return self._sorted(x_BID, routes)
        b = x_BID.shape[0]
        weights_BE = x_BID.new_zeros(b, self.num_experts).scatter(1, routes.experts_BK, routes.weights_BK)
        out_BnD = x_BID.new_zeros(b, self.num_out, self.dim)
        for e, expert in enumerate(self.experts):
            out_BnD = out_BnD + expert(x_BID) * weights_BE[:, e].view(-1, 1, 1)
        return out_BnD

    def _sorted(self, x_BID: torch.Tensor, routes: Routes) -> torch.Tensor:
        """Each expert on its own rows, cut from the routes sorted by expert (one host read of E counts)."""
        k = self.opts.top_k
        experts_R = routes.experts_BK.flatten()  # routes in (example, slot) order
        order_R = torch.sort(experts_R, stable=True).indices
        counts_E = torch.zeros(self.num_experts, dtype=torch.int64, device=x_BID.device)
        counts_E.index_add_(0, experts_R, torch.ones_like(experts_R))
        token_R = order_R // k
        x_RID = x_BID[token_R]
        parts = [expert(rows) for expert, rows in zip(self.experts, x_RID.split(read_sizes(counts_E)))]
        y_RnD = torch.cat(parts) * routes.weights_BK.flatten()[order_R].view(-1, 1, 1)
        return x_BID.new_zeros(x_BID.shape[0], self.num_out, self.dim).index_add(0, token_R, y_RnD)

    def balance_loss(self, routes: Routes) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Switch loss ``E · Σ_e f_e P_e`` (times its weight) and the per-expert load f as diagnostics.

        f_e is the share of routes to expert e, P_e the mean router probability of e, both over the
        batch, or over every rank's batch when ``stats_reducer`` is set (one small all-reduce).
        """
        e = self.num_experts
        experts_R = routes.experts_BK.flatten()
        counts_E = torch.zeros(e, device=experts_R.device).index_add_(
            0, experts_R, torch.ones(experts_R.shape, device=experts_R.device)
        )
        examples = routes.probs_BE.new_full((1,), float(routes.probs_BE.shape[0]))
        stats = torch.cat([routes.probs_BE.sum(dim=0), counts_E, examples])
        if self.stats_reducer is not None:
            stats = self.stats_reducer(stats)
        probs_E, load_E = stats[:e] / stats[2 * e], stats[e : 2 * e] / (stats[2 * e] * self.opts.top_k)
        aux = e * (load_E * probs_E).sum() * self.opts.load_balance_weight
        load_E = load_E.detach()
        return aux, {f"mowe/load/e{j}": load_E[j] for j in range(e)}

    # -- FLOPs -------------------------------------------------------------------------------------

    def expert_flops(self) -> FlopCount:
        """Per-example FLOPs of one routed expert (all routed experts have the same shape)."""
        return cast(WukongExpert, self.experts[0]).flops()

    def flops(self) -> FlopCount:
        """Per-example FLOPs: every expert (partitions) or the top_k active ones plus the router (routed)."""
        if self.router is None:
            return sum((cast(WukongExpert, expert).flops() for expert in self.experts), FlopCount())
        d, e = self.router.in_features, self.router.out_features
        return self.expert_flops().scaled(self.opts.top_k) + linear(d, e)

    def executed_flops(self) -> FlopCount:
        """What runs: with ``expert_compute: dense`` every routed expert on every example (E, not top_k)."""
        if self.router is None or self.opts.expert_compute == "sorted":
            return self.flops()
        d, e = self.router.in_features, self.router.out_features
        return self.expert_flops().scaled(self.num_experts) + linear(d, e)
