"""A HiLoMoE block: a base linear layer W0 adapted by L hierarchically routed layers of rank-1 experts.

    y = W0 x + b + Σ_l Σ_k s_k^l(x) · u_k^l (v_k^lᵀ x)          (docs/models/hilomoe.md)

Expert k of MoE layer l is the rank-1 matrix u_k^l v_k^lᵀ: ``d_in + d_out`` parameters. All L
layers read the same input x; their depth lives in the routing chain (``routing.py``), so after
the chain the expert work of every layer is **one** batched computation over the stacked
``V [L, K, I]`` and ``U [L, K, O]`` — no Python loop over layers.

``HiLoMoEBase`` holds everything both backends share (base layer, router, auxiliary losses, the
training-stage switch, FLOPs); ``HiLoMoELinear`` is the pure-PyTorch reference
(``MoEBackend.REFERENCE``). ``recscale.sharding.expert_parallel`` swaps in the DeepSpeed one.

Tensor legend: B tokens, I input width, O output width, L MoE layers, K experts per layer,
A routed (active) experts per layer.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import nn

from recscale.modules.flops import FlopCount, linear, matmul
from recscale.modules.hilomoe.routing import (
    HierarchicalRouter,
    MoEAux,
    Routing,
    StatsReducer,
    balance_stats,
    diversity_penalty,
    load_balance_loss,
    router_z_loss,
)

Role = Literal["backbone", "experts", "routers"]
"""What a parameter is for the three-stage schedule."""


class MoEBackend(enum.Enum):
    """Who runs the experts: plain PyTorch on one device, or DeepSpeed expert parallelism."""

    REFERENCE = "reference"
    DEEPSPEED = "deepspeed"


@dataclass(frozen=True)
class AuxWeights:
    """Weights of the auxiliary terms (model config times the current stage's scales)."""

    load_balance: float = 0.01
    z_loss: float = 0.001
    diversity: float = 0.0

    def scaled(self, load_balance: float, z_loss: float, diversity: float) -> AuxWeights:
        """These weights times per-term scales."""
        return AuxWeights(self.load_balance * load_balance, self.z_loss * z_loss, self.diversity * diversity)


class HiLoMoEBase(nn.Module):
    """What every HiLoMoE backend shares; subclasses provide the experts.

    Subclasses implement ``expert_keys`` (the experts' V as ``[L, K, I]``, for tied router keys
    and the diversity penalty) and ``expert_term`` (``Σ_l Σ_k s_k^l u_k^l v_k^lᵀ x``).

    Args:
        in_features: I.
        out_features: O.
        num_experts: K experts per MoE layer.
        num_layers: L MoE layers.
        routing: ``dense`` or ``topk``.
        top_k: routed experts per layer with ``topk``.
        router_keys: ``tied`` or ``separate``.
        query: ``linear`` or ``identity``.
        logit_scale: router logits multiplier (0 = 1/sqrt(I)).
        route_dropout: training-time dropout of the routes' combine weights (``HierarchicalRouter``).
        aux_weights: weights of the auxiliary losses.
        diversity_normalize: row-normalise V in the diversity penalty.
        bias: the base layer has a bias.
        base: an existing Linear to adapt (its weights kept) instead of a new one.
        router: an existing router to use (the routing arguments are then ignored).
    """

    backend = MoEBackend.REFERENCE

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_experts: int = 8,
        num_layers: int = 2,
        routing: str = "dense",
        top_k: int = 2,
        router_keys: str = "tied",
        query: str = "linear",
        logit_scale: float = 0.0,
        route_dropout: float = 0.0,
        aux_weights: AuxWeights | None = None,
        diversity_normalize: bool = True,
        bias: bool = True,
        base: nn.Linear | None = None,
        router: HierarchicalRouter | None = None,
    ) -> None:
        super().__init__()
        if num_experts < 1 or num_layers < 1:
            raise ValueError(
                f"model.hilomoe: num_experts and num_layers must be >= 1, got {num_experts} and {num_layers}"
            )
        self.in_features = in_features
        self.out_features = out_features
        self.num_experts = num_experts
        self.num_layers = num_layers
        self.base = base if base is not None else nn.Linear(in_features, out_features, bias=bias)
        self.router = (
            router
            if router is not None
            else HierarchicalRouter(
                in_features, num_experts, num_layers, routing, top_k, router_keys, query, logit_scale, route_dropout
            )
        )
        self.aux_weights = aux_weights or AuxWeights()
        self.aux_scales = AuxWeights(1.0, 1.0, 1.0)
        self.diversity_normalize = diversity_normalize
        self.experts_enabled = True
        """False in stage 1: the block is its base layer (routing and experts skipped)."""
        self.stats_reducer: StatsReducer | None = None
        """Sums the balance statistics over a wider batch; set by data-parallel wrappers."""
        self.last_aux: MoEAux | None = None
        """Auxiliary losses of the latest forward (None when the experts were off)."""

    @property
    def active_experts(self) -> int:
        """A: experts each token reaches per MoE layer."""
        return int(self.router.top_k)

    # -- to implement ------------------------------------------------------------------------------

    def expert_keys(self) -> torch.Tensor:
        """All experts' down-projections V ``[L, K, I]`` (may be a gathered copy)."""
        raise NotImplementedError

    def expert_term(self, x_BI: torch.Tensor, routing: Routing) -> torch.Tensor:
        """``[B, O]``: the routed experts' contribution."""
        raise NotImplementedError

    def expert_param_role(self, name: str) -> Role:
        """Role of a parameter of this block by its local name (override for other layouts)."""
        if name.startswith("router."):
            return "routers"
        if name.startswith("base."):
            return "backbone"
        return "experts"

    # -- shared ------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., I] -> [..., O]``; records the auxiliary losses in ``last_aux``."""
        y: torch.Tensor = self.base(x)
        if not self.experts_enabled:
            self.last_aux = None
            return y
        x_BI = x.reshape(-1, self.in_features)
        keys_LKI = self.expert_keys() if self._needs_keys() else None
        routing = self.router(x_BI, keys_LKI)
        y_BO = self.expert_term(x_BI, routing)
        self.last_aux = self.aux_losses(routing, keys_LKI)
        return y + y_BO.reshape(y.shape)

    def _needs_keys(self) -> bool:
        return self.router.tied or self.aux_weights.diversity * self.aux_scales.diversity > 0

    def aux_losses(self, routing: Routing, keys_LKI: torch.Tensor | None) -> MoEAux:
        """Load balance, z-loss and diversity of one batch, and their weighted sum."""
        stats = balance_stats(routing)
        if self.stats_reducer is not None:
            stats = self.stats_reducer(stats)
        lb, load_LK = load_balance_loss(stats, self.num_layers, self.num_experts)
        z = router_z_loss(routing)
        w = self.aux_weights.scaled(self.aux_scales.load_balance, self.aux_scales.z_loss, self.aux_scales.diversity)
        if w.diversity > 0 and keys_LKI is not None:
            div = diversity_penalty(keys_LKI, self.diversity_normalize)
        else:
            div = lb.new_zeros(())
        total = w.load_balance * lb + w.z_loss * z + w.diversity * div
        return MoEAux(load_balance=lb, z_loss=z, diversity=div, load_LK=load_LK, total=total)

    def set_aux_scales(self, load_balance: float = 1.0, z_loss: float = 1.0, diversity: float = 1.0) -> None:
        """Per-stage multipliers of the configured auxiliary weights."""
        self.aux_scales = replace(self.aux_scales, load_balance=load_balance, z_loss=z_loss, diversity=diversity)

    def linear_flops(self, input_grad: bool = True) -> FlopCount:
        """Per-token FLOPs with **active experts only** (the MFU convention), forward and backward."""
        return self._flops(self.active_experts, input_grad)

    def _flops(self, experts_per_layer: int, input_grad: bool) -> FlopCount:
        """What runs: the base layer alone while the experts are off (stage 1).

        A frozen weight (the backbone in stage 2) computes no weight gradient.
        """
        i, o, n = self.in_features, self.out_features, self.num_layers * experts_per_layer
        base = linear(i, o, input_grad, weight_grad=self.base.weight.requires_grad)
        if not self.experts_enabled:
            return base
        trained = any(
            p.requires_grad for name, p in self.named_parameters() if self.expert_param_role(name) == "experts"
        )
        down = matmul(1, i, n, grad_a=input_grad, grad_b=trained)
        up = matmul(1, n, o, grad_b=trained)
        return base + self.router.flops(input_grad) + down + up

    def extra_repr(self) -> str:
        """Sizes, routing and backend, for ``print(model)``."""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, experts={self.num_experts}, "
            f"layers={self.num_layers}, routing={self.router.routing}, top_k={self.active_experts}, "
            f"backend={self.backend.value}"
        )


class HiLoMoELinear(HiLoMoEBase):
    """The reference HiLoMoE block (``MoEBackend.REFERENCE``): ``[..., I] -> [..., O]``.

    Parameters: ``base`` (W0, b), ``router`` (W_q, optional keys), ``experts_v [L, K, I]`` (down
    projections, Xavier-uniform per layer) and ``experts_u [L, K, O]`` (up projections, zeros by
    default so a fresh block equals its base layer).

    Args:
        in_features: I.
        out_features: O.
        expert_init_std: std of the normal init of U (0 = zeros).
        expert_compute: ``dense`` (all K experts as two matmuls, then weighted; the fast path for
            small K) or ``gather`` (only the routed experts' rows, per token: FLOPs = active experts).
        **kwargs: the routing and loss settings of ``HiLoMoEBase``.

    Example::

        moe = HiLoMoELinear(64, 32, num_experts=8, num_layers=3, routing="topk", top_k=2)
        y = moe(torch.randn(16, 64))   # [16, 32]
        moe.last_aux.total             # weighted auxiliary loss of this batch
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        expert_init_std: float = 0.0,
        expert_compute: str = "dense",
        **kwargs: Any,
    ) -> None:
        super().__init__(in_features, out_features, **kwargs)
        if expert_compute not in ("dense", "gather"):
            raise ValueError(f"model.hilomoe.expert_compute: expected 'dense' or 'gather', got {expert_compute!r}")
        self.expert_compute = expert_compute
        self.experts_v = nn.Parameter(torch.empty(self.num_layers, self.num_experts, in_features))
        self.experts_u = nn.Parameter(torch.zeros(self.num_layers, self.num_experts, out_features))
        for layer in range(self.num_layers):
            nn.init.xavier_uniform_(self.experts_v.data[layer])
        if expert_init_std > 0:
            nn.init.normal_(self.experts_u, std=expert_init_std)

    @classmethod
    def from_linear(cls, layer: nn.Linear, **kwargs: Any) -> HiLoMoELinear:
        """A block whose base is ``layer`` (its weights kept), on the same device and dtype."""
        w = layer.weight
        with torch.device(w.device):
            block = cls(layer.in_features, layer.out_features, base=layer, **kwargs)
        return block.to(w.dtype)

    def expert_keys(self) -> torch.Tensor:
        """The experts' V."""
        return self.experts_v

    def expert_term(self, x_BI: torch.Tensor, routing: Routing) -> torch.Tensor:
        """All L layers at once: two matmuls over the stacked experts (or per-token gathers)."""
        b = x_BI.shape[0]
        if self.expert_compute == "gather":
            layer_L1 = torch.arange(self.num_layers, device=x_BI.device).view(-1, 1)
            v_BLAI = self.experts_v[layer_L1, routing.experts_BLA]
            u_BLAO = self.experts_u[layer_L1, routing.experts_BLA]
            a_BLA = torch.einsum("bi,blai->bla", x_BI, v_BLAI)
            return torch.einsum("bla,blao->bo", a_BLA * routing.gates_BLA, u_BLAO)
        n = self.num_layers * self.num_experts
        a_BN = torch.mm(x_BI, self.experts_v.reshape(n, self.in_features).t())
        h_BN = a_BN * routing.weights_BLK.reshape(b, n)
        return torch.mm(h_BN, self.experts_u.reshape(n, self.out_features))

    def executed_flops(self, input_grad: bool = True) -> FlopCount:
        """FLOPs this implementation runs: all K experts with ``expert_compute: dense``."""
        if self.expert_compute == "dense":
            return self._flops(self.num_experts, input_grad)
        return self.linear_flops(input_grad)
