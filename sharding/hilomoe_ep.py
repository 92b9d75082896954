"""HiLoMoE under expert parallelism (``MoEBackend.DEEPSPEED``): ``DeepSpeedHiLoMoELinear``.

``apply_expert_parallel`` (``expert_parallel.py``) swaps every reference ``HiLoMoELinear`` of a dense
arch for a ``DeepSpeedHiLoMoELinear`` holding only this rank's experts, inside DeepSpeed ``MoE``
layers (``deepspeed_moe.py``: the engine creates the groups, reduces expert gradients over the
expert-data-parallel group and checkpoints one file per expert).

What is what (``docs/models/hilomoe.md`` §EP):

- an **expert** is one rank-1 pair ``(v_k^l [I], u_k^l [O])`` of MoE layer l; with ``one_round``
  dispatch the L·K pairs of a block are one DeepSpeed ``MoE`` of E = L·K experts (global id
  ``l·K + k``), placed contiguously: EP rank r holds ids ``[r·E/ep, (r+1)·E/ep)``;
- a **token** is one example's input vector x of the block (``[I]``);
- tokens travel one of two ways (``sharding.moe.exchange``): ``dropless`` (default) sends exactly
  each token's routes with split sizes (``moe_dispatch.py``: x ``[I]`` out, ``[O]`` back, nothing
  dropped, one host read of the split sizes per dispatch at ep_size > 1); ``padded`` uses DeepSpeed's
  ``MOELayer``: fixed ``[E, C, M]`` buffers, x zero-padded to M = max(I, O) because its dispatch and
  combine share one width, routes over the capacity C dropped;
- routes come from the shared score chain (``HierarchicalRouter``, non-expert parameters, run
  locally), so one all-to-all pair carries every layer's routes (L·A routes per token); on the
  padded path ``HiLoMoEGate`` turns them into DeepSpeed 0.19's 7-tuple. ``per_layer`` dispatch runs
  one ``MoE`` of K experts per layer instead (L all-to-all pairs), for comparison.

Tied router keys need every expert's v on every rank: ``gather_rows`` all-gathers the local v's
over the EP group (backward: all-reduce, then this rank's rows), so the routing gradient of an
expert's v reaches the rank that owns it. With ``balance_stats: global`` the balance statistics
are summed over all ranks (differentiably), which makes the auxiliary loss equal the
single-device model's on the global batch.

Tensor legend: B tokens per rank, I input width, O output width, M dispatch width, L MoE layers,
K experts per layer, A routed experts per layer, R routes per token, E experts per dispatch,
G EP ranks, N local experts, C capacity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.distributed as dist
import torch.nn.functional as F
from deepspeed.moe.layer import MoE
from deepspeed.moe.sharded_moe import MOELayer
from torch import nn

from recscale.configs.schema import MoEParallelConfig
from recscale.modules.flops import FlopCount, matmul
from recscale.modules.hilomoe.layer import HiLoMoEBase, HiLoMoELinear, MoEBackend
from recscale.modules.hilomoe.routing import Routing
from recscale.sharding.deepspeed_moe import dispatcher_of, expert_container, tag_expert_parameters
from recscale.sharding.moe_collectives import gather_rows
from recscale.sharding.moe_dispatch import DroplessDispatcher

if TYPE_CHECKING:  # imported where used: the checkpoint package is not needed to train
    from recscale.sharding.checkpoint.experts import ExpertSlot

# --------------------------------------------------------------------------------------------------
# DeepSpeed gate and experts
# --------------------------------------------------------------------------------------------------


@dataclass
class GateRoutes:
    """Precomputed routes handed to ``HiLoMoEGate`` through ``MOELayer.forward``'s second input."""

    experts_SR: torch.Tensor
    """Global expert id of each route (int64)."""
    gates_SR: torch.Tensor
    """Combine weight of each route."""


def route_locations(experts_RS: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Slot of each route in its expert's buffer, counting routes in route-major order.

    Equivalent to a cumulative sum over one-hot masks, in O(R·S log(R·S)) without the ``[R·S, E]``
    mask: a stable sort groups each expert's routes in arrival order.
    """
    flat = experts_RS.reshape(-1)
    order = torch.sort(flat, stable=True).indices
    counts = torch.bincount(flat, minlength=num_experts)
    starts = torch.cumsum(counts, 0) - counts
    rank_in_sort = torch.empty_like(order)
    rank_in_sort[order] = torch.arange(flat.numel(), device=flat.device)
    return (rank_in_sort - starts[flat]).view_as(experts_RS)


class HiLoMoEGate(nn.Module):
    """DeepSpeed 0.19 gate contract over precomputed HiLoMoE routes (no parameters).

    ``forward(x [S, M], routes, sparse_routes, use_tutel)`` returns ``(l_aux, C, E, indices [R, S]
    int32 (-1 = dropped), locations [R, S] int32, gates [R, S] float32, expert_counts [E])``.
    The auxiliary losses are computed by the block itself, so ``l_aux`` is 0.

    Args:
        num_experts: E, experts of this dispatch.
        routes_per_expert_group: A, routes a token sends to one layer's K experts (for capacity).
        experts_per_group: K.
        capacity_factor: 0 = capacity S (nothing dropped), else ``ceil(S·A/K·factor)``.
        min_capacity: lower bound of the capacity when ``capacity_factor`` > 0.
    """

    def __init__(
        self,
        num_experts: int,
        routes_per_expert_group: int,
        experts_per_group: int,
        capacity_factor: float = 0.0,
        min_capacity: int = 4,
    ) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.routes_per_group = routes_per_expert_group
        self.experts_per_group = experts_per_group
        self.capacity_factor = capacity_factor
        self.min_capacity = min_capacity
        self.ep_group: Any = None

    def _set_ep_group(self, ep_group: Any) -> None:
        self.ep_group = ep_group

    def capacity(self, num_tokens: int) -> int:
        """Slots per expert; must be equal on every EP rank (equal per-rank batches)."""
        if self.capacity_factor <= 0:
            return num_tokens
        c = math.ceil(num_tokens * self.routes_per_group / self.experts_per_group * self.capacity_factor)
        return min(num_tokens, max(c, self.min_capacity))

    def forward(
        self, x_SM: torch.Tensor, routes: GateRoutes, sparse_routes: bool = True, use_tutel: bool = False
    ) -> tuple[torch.Tensor, int, int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The 7-tuple ``MOELayer.forward`` unpacks."""
        if not sparse_routes or use_tutel:
            raise ValueError("HiLoMoEGate supports DeepSpeed's sparse-route dispatch only (no Tutel)")
        s = x_SM.shape[0]
        c = self.capacity(s)
        experts_RS = routes.experts_SR.t().contiguous()
        gates_RS = routes.gates_SR.t().float()
        loc_RS = route_locations(experts_RS, self.num_experts)
        keep = loc_RS < c
        experts_RS = torch.where(keep, experts_RS, -1)
        loc_RS = torch.where(keep, loc_RS, 0)
        gates_RS = torch.where(keep, gates_RS, 0.0)
        counts_E = torch.bincount(experts_RS[keep], minlength=self.num_experts)
        l_aux = x_SM.new_zeros((), dtype=torch.float32)
        return l_aux, c, self.num_experts, experts_RS.int(), loc_RS.int(), gates_RS, counts_E


class RankOneExpert(nn.Module):
    """One expert: ``x -> (v·x) u``; ``v [I]``, ``u [O]``."""

    def __init__(self, v: torch.Tensor, u: torch.Tensor) -> None:
        super().__init__()
        self.v = nn.Parameter(v.detach().clone())
        self.u = nn.Parameter(u.detach().clone())


class RankOneExperts(nn.Module):
    """This rank's experts, run as one batched op: ``[G, N, C, M] -> [G, N, C, M]``.

    Parameters live at ``deepspeed_experts.<local id>.{v,u}`` (the layout DeepSpeed's checkpoint
    code splits into one file per global expert) and are tagged as expert parameters.
    ``forward`` is the padded path's; the dropless path calls ``routed``.
    """

    def __init__(self, v_NI: torch.Tensor, u_NO: torch.Tensor, width: int, group_name: str) -> None:
        super().__init__()
        self.deepspeed_experts = nn.ModuleList(RankOneExpert(v, u) for v, u in zip(v_NI, u_NO))
        self.num_local_experts = len(self.deepspeed_experts)
        self.in_features, self.out_features, self.width = v_NI.shape[1], u_NO.shape[1], width
        tag_expert_parameters(self, group_name)

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``v [N, I]``, ``u [N, O]``."""
        experts = [cast(RankOneExpert, e) for e in self.deepspeed_experts]
        return torch.stack([e.v for e in experts]), torch.stack([e.u for e in experts])

    def forward(self, x_GNCM: torch.Tensor) -> torch.Tensor:
        """``(v_n · x) u_n`` for every slot of every local expert n."""
        v_NI, u_NO = self.stacked()
        a_GNC = torch.einsum("gnci,ni->gnc", x_GNCM[..., : self.in_features], v_NI)
        y_GNCO = a_GNC.unsqueeze(-1) * u_NO[None, :, None, :]
        return F.pad(y_GNCO, (0, self.width - self.out_features))

    def routed(self, x_TI: torch.Tensor, local_T: torch.Tensor) -> torch.Tensor:
        """``[T, O]``: ``(v_n · x) u_n`` for each received row and its local expert n (dropless path)."""
        v_NI, u_NO = self.stacked()
        a_T = (x_TI * v_NI[local_T]).sum(dim=-1)
        return a_T.unsqueeze(-1) * u_NO[local_T]


# --------------------------------------------------------------------------------------------------
# the block
# --------------------------------------------------------------------------------------------------


def _make_moe(
    num_experts: int, ep_size: int, width: int, gate: HiLoMoEGate, v_NI: torch.Tensor, u_NO: torch.Tensor
) -> MoE:
    """A DeepSpeed ``MoE`` whose gate and experts are ours."""
    moe = expert_container(num_experts, ep_size, gate=gate)
    moe.deepspeed_moe.experts = RankOneExperts(v_NI, u_NO, width, moe.expert_group_name)
    return moe


class DeepSpeedHiLoMoELinear(HiLoMoEBase):
    """A HiLoMoE block whose experts are spread over the EP group and reached by DeepSpeed's all-to-all.

    Same math, parameters and auxiliary losses as ``HiLoMoELinear`` (base layer and router are
    shared modules, moved over); only the experts are split. Build it with ``from_reference``.

    Args:
        reference: the block to convert (every rank holds the same one).
        ep_size: G, expert-parallel group size.
        ep_rank: this rank's position in its EP group.
        dispatch: ``one_round`` or ``per_layer``.
        capacity_factor: see ``HiLoMoEGate`` (padded exchange only).
        min_capacity: see ``HiLoMoEGate``.
        exchange: ``dropless`` (split sizes, ``moe_dispatch.py``) or ``padded`` (DeepSpeed's ``MOELayer``).
    """

    backend = MoEBackend.DEEPSPEED

    def __init__(
        self,
        reference: HiLoMoELinear,
        ep_size: int,
        ep_rank: int,
        dispatch: str = "one_round",
        capacity_factor: float = 0.0,
        min_capacity: int = 4,
        exchange: str = "dropless",
    ) -> None:
        super().__init__(
            reference.in_features,
            reference.out_features,
            reference.num_experts,
            reference.num_layers,
            aux_weights=reference.aux_weights,
            diversity_normalize=reference.diversity_normalize,
            base=reference.base,
            router=reference.router,
        )
        if dispatch not in ("one_round", "per_layer"):
            raise ValueError(f"sharding.moe.dispatch: expected 'one_round' or 'per_layer', got {dispatch!r}")
        if exchange not in ("dropless", "padded"):
            raise ValueError(f"sharding.moe.exchange: expected 'dropless' or 'padded', got {exchange!r}")
        if exchange == "dropless" and capacity_factor > 0:
            raise ValueError(
                f"sharding.moe.capacity_factor: {capacity_factor} drops routes, which only sharding.moe.exchange: "
                "padded does (dropless sends every route)"
            )
        n_layers, k = self.num_layers, self.num_experts
        experts = n_layers * k if dispatch == "one_round" else k
        if experts % ep_size:
            raise ValueError(f"sharding.ep_size: {ep_size} does not divide the {experts} experts of one dispatch")
        self.aux_scales = reference.aux_scales
        self.experts_enabled = reference.experts_enabled
        self.dispatch, self.ep_size, self.ep_rank, self.exchange = dispatch, ep_size, ep_rank, exchange
        self.width = max(self.in_features, self.out_features)
        local = experts // ep_size
        rows = slice(ep_rank * local, (ep_rank + 1) * local)
        a = self.active_experts
        if dispatch == "one_round":
            v_EI = reference.experts_v.detach().reshape(experts, -1)
            u_EO = reference.experts_u.detach().reshape(experts, -1)
            gate = HiLoMoEGate(experts, a, k, capacity_factor, min_capacity)
            self.moes = nn.ModuleList([_make_moe(experts, ep_size, self.width, gate, v_EI[rows], u_EO[rows])])
        else:
            self.moes = nn.ModuleList(
                _make_moe(
                    k,
                    ep_size,
                    self.width,
                    HiLoMoEGate(k, a, k, capacity_factor, min_capacity),
                    reference.experts_v.detach()[layer, rows],
                    reference.experts_u.detach()[layer, rows],
                )
                for layer in range(n_layers)
            )

    @classmethod
    def from_reference(
        cls, reference: HiLoMoELinear, ep_size: int, ep_rank: int, cfg: MoEParallelConfig
    ) -> DeepSpeedHiLoMoELinear:
        """The expert-parallel twin of ``reference`` for EP rank ``ep_rank``."""
        return cls(reference, ep_size, ep_rank, cfg.dispatch, cfg.capacity_factor, cfg.min_capacity, cfg.exchange)

    def _dispatchers(self) -> list[MOELayer]:
        """DeepSpeed's MoE layer of each dispatch (one, or one per MoE layer)."""
        return [dispatcher_of(m) for m in self.moes]

    def _ep_group(self) -> Any:
        group = self._dispatchers()[0].ep_group
        if self.ep_size > 1:
            if group is None:
                raise RuntimeError("expert-parallel HiLoMoE needs deepspeed.initialize (it creates the EP groups)")
            if dist.get_rank(group) != self.ep_rank:
                raise RuntimeError(
                    f"EP rank mismatch: experts were placed for EP rank {self.ep_rank}, DeepSpeed made this rank "
                    f"{dist.get_rank(group)}; call apply_expert_parallel with DeepSpeed's layout"
                )
        return group

    def expert_keys(self) -> torch.Tensor:
        """Every expert's v ``[L, K, I]``, all-gathered over the EP group (differentiable)."""
        group = self._ep_group()
        parts = []
        for layer in self._dispatchers():
            v_NI, _ = cast(RankOneExperts, layer.experts).stacked()
            parts.append(gather_rows(v_NI, group) if self.ep_size > 1 else v_NI)
        return torch.cat(parts).view(self.num_layers, self.num_experts, self.in_features)

    def expert_slots(self) -> dict[str, ExpertSlot]:
        """Each local expert parameter (name inside this block) and its place in the reference stacks.

        Global id g of local expert n is ``ep_rank·N + n``; with ``one_round`` g = l·K + k, with
        ``per_layer`` dispatch m is layer l and g = k. Checkpoints use this to write and read the
        layout-free ``experts_v [L, K, I]`` / ``experts_u [L, K, O]`` (``sharding/checkpoint/experts.py``).
        """
        from recscale.sharding.checkpoint.experts import ExpertSlot

        shapes = {
            "v": (self.num_layers, self.num_experts, self.in_features),
            "u": (self.num_layers, self.num_experts, self.out_features),
        }
        slots = {}
        for m, dispatcher in enumerate(self._dispatchers()):
            local = cast(RankOneExperts, dispatcher.experts).num_local_experts
            for n in range(local):
                g = self.ep_rank * local + n
                layer, k = divmod(g, self.num_experts) if self.dispatch == "one_round" else (m, g)
                for which, shape in shapes.items():
                    name = f"moes.{m}.deepspeed_moe.experts.deepspeed_experts.{n}.{which}"
                    slots[name] = ExpertSlot(reference=f"experts_{which}", index=(layer, k), shape=shape)
        return slots

    def expert_term(self, x_BI: torch.Tensor, routing: Routing) -> torch.Tensor:
        """Dispatch, run and combine the routed experts of all layers (one or L all-to-all pairs)."""
        group = self._ep_group()
        if self.exchange == "dropless":
            return self._dropless(x_BI, routing, group)
        x_BM = F.pad(x_BI, (0, self.width - self.in_features))
        b, n_layers, a = routing.experts_BLA.shape
        if self.dispatch == "one_round":
            offset_L1 = torch.arange(n_layers, device=x_BI.device).view(-1, 1) * self.num_experts
            routes = GateRoutes(
                (routing.experts_BLA + offset_L1).reshape(b, n_layers * a), routing.gates_BLA.reshape(b, n_layers * a)
            )
            y_BM: torch.Tensor = self._dispatchers()[0](x_BM, routes)
        else:
            y_BM = x_BM.new_zeros(x_BM.shape)
            for layer, dispatcher in enumerate(self._dispatchers()):
                routes = GateRoutes(routing.experts_BLA[:, layer], routing.gates_BLA[:, layer])
                y_BM = y_BM + dispatcher(x_BM, routes)
        return y_BM[:, : self.out_features]

    def _dropless(self, x_BI: torch.Tensor, routing: Routing, group: Any) -> torch.Tensor:
        """Every route's x to its expert's rank and ``(v·x) u`` back, weighted by its gate and summed per token."""
        b, n_layers, a = routing.experts_BLA.shape
        if self.dispatch == "one_round":
            offset_L1 = torch.arange(n_layers, device=x_BI.device).view(-1, 1) * self.num_experts
            rounds = [((routing.experts_BLA + offset_L1).reshape(-1), routing.gates_BLA.reshape(-1), n_layers * a)]
        else:
            rounds = [
                (routing.experts_BLA[:, layer].reshape(-1), routing.gates_BLA[:, layer].reshape(-1), a)
                for layer in range(n_layers)
            ]
        y_BO = x_BI.new_zeros(b, self.out_features)
        for (experts_R, gates_R, per_token), layer in zip(rounds, self._dispatchers()):
            experts = cast(HiLoMoEGate, layer.gate).num_experts
            dispatcher = DroplessDispatcher(experts, self.ep_size, group, clock=layer)
            token_R = torch.arange(b, device=x_BI.device).repeat_interleave(per_token)
            plan = dispatcher.plan(experts_R, split_by_expert=False)  # one row's expert is gathered per row
            x_TI = dispatcher.dispatch(x_BI, token_R, plan)
            y_TO = cast(RankOneExperts, layer.experts).routed(x_TI, plan.local_expert_T)
            y_RO = dispatcher.combine(y_TO, plan) * gates_R.unsqueeze(-1)
            y_BO = y_BO + y_RO.view(b, per_token, self.out_features).sum(dim=1)
        return y_BO

    def capacity_padded_flops(self, tokens_per_rank: int, input_grad: bool = True) -> FlopCount:
        """Per-token FLOPs when the experts run on every capacity slot, empty ones included.

        That is what DeepSpeed's padded exchange executes: each dispatch fills E·C slots per rank (C =
        capacity), against L·A routed tokens per token in ``linear_flops`` (the MFU convention). With
        ``capacity_factor`` 0 (C = tokens) that is K/A times the active expert work; with factor f about
        f times. The dropless exchange runs the routed tokens only: ``linear_flops``.
        """
        gates = [cast(HiLoMoEGate, layer.gate) for layer in self._dispatchers()]
        slots = sum(g.num_experts * g.capacity(tokens_per_rank) for g in gates)
        per_route = matmul(1, self.in_features, 1, grad_a=input_grad, grad_b=True) + matmul(1, 1, self.out_features)
        return self._flops(0, input_grad) + per_route.scaled(slots / tokens_per_rank)

    def extra_repr(self) -> str:
        """Adds the expert-parallel placement."""
        where = f"ep_size={self.ep_size}, ep_rank={self.ep_rank}, dispatch={self.dispatch}, exchange={self.exchange}"
        return f"{super().extra_repr()}, {where}"
