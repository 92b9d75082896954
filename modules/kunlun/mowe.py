"""Mixture of Wukong Experts (MoWE): Kunlun's non-sequence interaction module, split into experts.

The interaction input ``[X_sum ‖ summaries]`` (I tokens) becomes n output tokens. Each expert is a
stack of ``WukongLayer``s (``modules/wukong``). How tokens reach experts is not in the sources
(papers.md §2.3: "each on a partition of the tokens"), so it is configurable
(``model.kunlun.mowe.partition``):

- ``strided``: expert e reads tokens e, e + E, e + 2E, ... (each expert sees X_sum and summaries);
- ``contiguous``: expert e reads the e-th of E consecutive chunks;
  in both, expert e emits its share n_e of the n output tokens, and the shares are concatenated.
  Every expert runs on every example: no router, no load balance, FLOPs = sum of the experts.
- ``routed``: a linear router on the mean input token picks ``top_k`` experts per example (softmax
  weights renormalised over the chosen ones); each chosen expert reads all I tokens and emits all n;
  outputs are mixed by the weights. A Switch load-balance loss ``E · Σ_e f_e P_e`` is the aux loss.

Backends: this module is ``MoEBackend.REFERENCE`` (all experts on this device). Expert parallelism
(``sharding.ep_size > 1``) is the job of ``recscale.sharding.expert_parallel``; what it must do for
MoWE is written in docs/models/kunlun.md §"MoWE and expert parallelism".

Legend: B batch, I input tokens, n output tokens, D token width, E experts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from recscale.modules.flops import FlopCount, linear, total
from recscale.modules.hilomoe.layer import MoEBackend
from recscale.modules.wukong import WukongLayer


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
        return sum((total(layer.flops()) for layer in self), FlopCount())  # type: ignore[operator]


class MixtureOfWukongExperts(nn.Module):
    """MoWE: ``[B, I, D] -> ([B, n, D], aux loss, diagnostics)``.

    Args:
        num_in: I.
        num_out: n.
        dim: D.
        opts: experts, partition rule, Wukong sizes.
    """

    backend = MoEBackend.REFERENCE

    def __init__(self, num_in: int, num_out: int, dim: int, opts: MoWEOptions) -> None:
        super().__init__()
        e = opts.num_experts
        if opts.partition not in ("strided", "contiguous", "routed"):
            raise ValueError(f"model.kunlun.mowe.partition: unknown {opts.partition!r}")
        if e < 1:
            raise ValueError(f"model.kunlun.mowe.num_experts: expected >= 1, got {e}")
        self.opts = opts
        self.num_in, self.num_out = num_in, num_out
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
        return self._routed(x_BID)

    def _select(self, x_BID: torch.Tensor, e: int) -> torch.Tensor:
        num_experts = len(self.experts)
        if self.opts.partition == "strided":
            return x_BID[:, e::num_experts]
        idx = self.index[e]
        return x_BID[:, idx[0] : idx[-1] + 1]

    def _routed(self, x_BID: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        assert self.router is not None
        num_experts, k = len(self.experts), self.opts.top_k
        probs_BE = torch.softmax(self.router(x_BID.mean(dim=1)).float(), dim=-1)
        top_p_BK, top_e_BK = probs_BE.topk(k, dim=-1)
        weights_BK = (top_p_BK / top_p_BK.sum(dim=-1, keepdim=True)).to(x_BID.dtype)
        out_BnD = x_BID.new_zeros(x_BID.shape[0], self.num_out, x_BID.shape[2])
        for e, expert in enumerate(self.experts):
            rows, slot = torch.nonzero(top_e_BK == e, as_tuple=True)
            y = expert(x_BID[rows]) * weights_BK[rows, slot].view(-1, 1, 1)
            out_BnD = out_BnD.index_add(0, rows, y)
        load_E = (
            torch.zeros(num_experts, device=x_BID.device).scatter_add_(
                0, top_e_BK.flatten(), torch.ones(top_e_BK.numel(), device=x_BID.device)
            )
            / top_e_BK.numel()
        )
        aux = num_experts * (load_E * probs_BE.mean(dim=0)).sum() * self.opts.load_balance_weight
        diagnostics = {f"mowe/load/e{e}": load_E[e] for e in range(num_experts)}
        return out_BnD, aux.to(x_BID.dtype), diagnostics

    def flops(self) -> FlopCount:
        """Per-example FLOPs: every expert (partitions) or the top_k active ones plus the router (routed)."""
        if self.router is None:
            return sum((expert.flops() for expert in self.experts), FlopCount())  # type: ignore[operator]
        d, e = self.router.in_features, self.router.out_features
        one: FlopCount = self.experts[0].flops()  # type: ignore[operator]
        return one.scaled(self.opts.top_k) + linear(d, e)
