"""HiLoMoE hierarchical routing: the cheap score chain that fixes all L layers' routes up front.

Layer l is routed from the previous layer's *scores*, never from its outputs::

    q¹ = W_q x                         (or x itself, ``query="identity"``)
    s^l = softmax(scale · q^l K^lᵀ)    (top-k: softmax over the k largest logits, 0 elsewhere)
    q^{l+1} = q^l + s^l K^l

K^l are the router keys of layer l: the experts' own down-projections V^l (``tied``, the
reconstruction's reading) or separate learned keys (``separate``). The chain costs
O(L·K·d_in) per token; once it has run, every layer's expert work can run at once.

Tensor legend: B tokens, I input width, L MoE layers, K experts per layer, A routed (active)
experts per layer (``top_k``, or K for dense routing).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from recscale.modules.flops import FlopCount, matmul


@dataclass
class Routing:
    """The routes of a batch of tokens through all L layers (the output of the score chain)."""

    logits_BLK: torch.Tensor
    """Scaled router logits before any top-k mask, float32 (for the z-loss and the balance loss)."""
    weights_BLK: torch.Tensor
    """Combine weights s^l, zero outside each token's routed experts (input dtype)."""
    experts_BLA: torch.Tensor
    """Routed expert ids per token and layer (``arange(K)`` for dense routing), int64."""
    gates_BLA: torch.Tensor
    """``weights_BLK`` at ``experts_BLA``."""


class HierarchicalRouter(nn.Module):
    """The score chain of one HiLoMoE block: ``x [B, I]`` and keys ``[L, K, I]`` -> ``Routing``.

    Args:
        in_features: I.
        num_experts: K.
        num_layers: L.
        routing: ``dense`` (softmax over all K) or ``topk``.
        top_k: routed experts per layer with ``topk``.
        router_keys: ``tied`` (keys are passed in: the experts' V) or ``separate`` (own parameter).
        query: ``linear`` (learned W_q) or ``identity``.
        logit_scale: logits multiplier (0 = 1/sqrt(I)).
        route_dropout: in training, each (token, layer, expert) route's combine weight is zeroed
            with this probability and the kept ones scaled by 1/(1-p) ("expert dropout": an
            expert's contribution to a token is dropped). The chain and the auxiliary losses use
            the undropped scores; evaluation never drops.

    Example::

        router = HierarchicalRouter(16, num_experts=4, num_layers=3, routing="topk", top_k=2)
        r = router(torch.randn(8, 16), keys_LKI=torch.randn(3, 4, 16))
        r.experts_BLA.shape   # [8, 3, 2]
    """

    def __init__(
        self,
        in_features: int,
        num_experts: int,
        num_layers: int,
        routing: str = "dense",
        top_k: int = 2,
        router_keys: str = "tied",
        query: str = "linear",
        logit_scale: float = 0.0,
        route_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= route_dropout < 1.0:
            raise ValueError(f"model.hilomoe.route_dropout: expected 0 <= p < 1, got {route_dropout}")
        if routing not in ("dense", "topk"):
            raise ValueError(f"model.hilomoe.routing: expected 'dense' or 'topk', got {routing!r}")
        if routing == "topk" and not 1 <= top_k <= num_experts:
            raise ValueError(f"model.hilomoe.top_k: expected 1..{num_experts} (num_experts), got {top_k}")
        self.in_features = in_features
        self.num_experts = num_experts
        self.num_layers = num_layers
        self.routing = routing
        self.top_k = top_k if routing == "topk" else num_experts
        self.scale = logit_scale if logit_scale > 0 else 1.0 / math.sqrt(in_features)
        self.route_dropout = route_dropout
        self.query = nn.Linear(in_features, in_features, bias=False) if query == "linear" else None
        self.keys: nn.Parameter | None = None
        if router_keys == "separate":
            self.keys = nn.Parameter(torch.empty(num_layers, num_experts, in_features))
            for layer in range(num_layers):
                nn.init.xavier_uniform_(self.keys.data[layer])

    @property
    def tied(self) -> bool:
        """The router keys are the experts' down-projections V."""
        return self.keys is None

    def forward(self, x_BI: torch.Tensor, keys_LKI: torch.Tensor | None = None) -> Routing:
        """Run the chain; ``keys_LKI`` are the experts' V (required when the keys are tied)."""
        if self.keys is not None:
            keys_LKI = self.keys
        assert keys_LKI is not None, "tied router keys need the experts' V"
        q_BI = self.query(x_BI) if self.query is not None else x_BI
        logits, weights, experts, gates = [], [], [], []
        for layer in range(self.num_layers):
            k_KI = keys_LKI[layer]
            logits_BK = torch.mm(q_BI, k_KI.t()).float() * self.scale
            w_BK, e_BA, g_BA = self._scores(logits_BK)
            w_BK = w_BK.to(x_BI.dtype)
            if layer + 1 < self.num_layers:
                q_BI = q_BI + torch.mm(w_BK, k_KI)
            logits.append(logits_BK)
            weights.append(w_BK)
            experts.append(e_BA)
            gates.append(g_BA.to(x_BI.dtype))
        weights_BLK = torch.stack(weights, dim=1)
        experts_BLA = torch.stack(experts, dim=1)
        gates_BLA = torch.stack(gates, dim=1)
        if self.training and self.route_dropout > 0:
            weights_BLK = F.dropout(weights_BLK, self.route_dropout)
            gates_BLA = weights_BLK.gather(-1, experts_BLA)
        return Routing(
            logits_BLK=torch.stack(logits, dim=1),
            weights_BLK=weights_BLK,
            experts_BLA=experts_BLA,
            gates_BLA=gates_BLA,
        )

    def _scores(self, logits_BK: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Weights over all K (zeros off-route), routed ids and their weights for one layer."""
        if self.routing == "dense":
            w_BK = logits_BK.softmax(dim=-1)
            e_BK = torch.arange(self.num_experts, device=logits_BK.device).expand_as(logits_BK)
            return w_BK, e_BK, w_BK
        top_BA, e_BA = logits_BK.topk(self.top_k, dim=-1)
        g_BA = top_BA.softmax(dim=-1)
        w_BK = torch.zeros_like(logits_BK).scatter(-1, e_BA, g_BA)
        return w_BK, e_BA, g_BA

    def flops(self, input_grad: bool = True) -> FlopCount:
        """Per-token FLOPs of the chain (query projection, L logit products, L-1 query updates)."""
        i, k = self.in_features, self.num_experts
        out = FlopCount()
        q_grad = input_grad
        if self.query is not None:
            out = out + matmul(1, i, i, grad_a=input_grad, grad_b=True)
            q_grad = True
        for layer in range(self.num_layers):
            out = out + matmul(1, i, k, grad_a=q_grad or layer > 0, grad_b=True)
            if layer + 1 < self.num_layers:
                out = out + matmul(1, k, i)
        return out


# --------------------------------------------------------------------------------------------------
# auxiliary losses
# --------------------------------------------------------------------------------------------------

StatsReducer = Callable[[torch.Tensor], torch.Tensor]
"""Sums balance statistics over a wider batch (e.g. all data-parallel ranks); identity if unset."""


@dataclass
class MoEAux:
    """Auxiliary losses of one HiLoMoE block for one batch."""

    load_balance: torch.Tensor
    """Switch load-balance loss, mean over the L layers (1.0 when perfectly balanced)."""
    z_loss: torch.Tensor
    """Router z-loss: mean over tokens and layers of logsumexp(logits)²."""
    diversity: torch.Tensor
    """Expert-diversity penalty, mean over layers of ``||V̂ V̂ᵀ - I||²_F / K²`` (0 when off)."""
    load_LK: torch.Tensor
    """Share of the routes each expert received (detached; sums to 1 per layer)."""
    total: torch.Tensor
    """Weighted sum that enters the training loss."""


def balance_stats(routing: Routing) -> torch.Tensor:
    """Additive statistics of the balance loss: ``[prob sums (L·K), route counts (L·K), tokens]``.

    Routes are the top-k experts (top-1 for dense routing, whose every token reaches every expert).
    Kept as one flat tensor so a data-parallel wrapper can sum it across ranks with one all-reduce.
    """
    logits_BLK = routing.logits_BLK
    b, num_layers, k = logits_BLK.shape
    probs_LK = logits_BLK.softmax(dim=-1).sum(dim=0)
    if routing.experts_BLA.shape[-1] == k:  # dense: count each token's top-1 expert
        routed_BLA = logits_BLK.argmax(dim=-1, keepdim=True)
    else:
        routed_BLA = routing.experts_BLA
    counts_LK = F.one_hot(routed_BLA, k).sum(dim=(0, 2)).to(probs_LK.dtype)
    tokens = probs_LK.new_ones(1) * b  # not float(b): a traced batch size stays symbolic (export)
    return torch.cat([probs_LK.flatten(), counts_LK.flatten(), tokens])


def load_balance_loss(stats: torch.Tensor, num_layers: int, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Switch loss ``K · Σ_k f_k P_k`` per layer, averaged over layers; also the loads f ``[L, K]``.

    f_k is the share of routes to expert k, P_k the mean router probability of k.
    """
    n = num_layers * num_experts
    probs_LK = stats[:n].view(num_layers, num_experts)
    counts_LK = stats[n : 2 * n].view(num_layers, num_experts)
    tokens = stats[2 * n]
    p_LK = probs_LK / tokens
    f_LK = counts_LK / counts_LK.sum(dim=-1, keepdim=True).clamp_min(1.0)
    loss = num_experts * (f_LK.detach() * p_LK).sum(dim=-1).mean()
    return loss, f_LK.detach()


def router_z_loss(routing: Routing) -> torch.Tensor:
    """Mean over tokens and layers of ``logsumexp(logits)²`` (keeps router logits small)."""
    return routing.logits_BLK.logsumexp(dim=-1).square().mean()


def diversity_penalty(v_LKI: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """``||V̂ V̂ᵀ - I||²_F / K²`` averaged over layers; V̂ = row-normalised V when ``normalize``."""
    v = F.normalize(v_LKI.float(), dim=-1) if normalize else v_LKI.float()
    k = v.shape[1]
    gram_LKK = torch.bmm(v, v.transpose(1, 2))
    eye = torch.eye(k, device=v.device, dtype=v.dtype)
    return (gram_LKK - eye).square().sum(dim=(1, 2)).mean() / (k * k)
