"""DeepSpeed's ``MoE`` layer as the container of an expert-parallel layer's local experts.

Whatever moves the tokens (DeepSpeed's capacity-padded ``MOELayer`` or our dropless dispatcher,
``moe_dispatch.py``), the local experts of every expert-parallel layer sit inside a DeepSpeed
``MoE`` module, so that the engine:

- creates the EP group (ranks that split the experts) and the expert-data-parallel group (ranks that
  hold the same experts) on ``deepspeed.initialize`` (``MoE.set_deepspeed_parallelism``);
- reduces expert gradients only over the expert-data-parallel group (parameters tagged
  ``allreduce=False`` and ``group_name``), and ``split_params_into_different_moe_groups_for_optimizer``
  gives them their own optimizer groups (ZeRO 1/2);
- writes one checkpoint file per global expert (``layer_<m>_expert_<g>_...``), which needs the
  experts at ``deepspeed_moe.experts.deepspeed_experts.<local id>``.

Its own gate would hold a parameter and draw random numbers; it is replaced by ours or by ``NoGate``.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from deepspeed.moe.layer import MoE
from deepspeed.moe.sharded_moe import MOELayer
from torch import nn


class LocalExperts(nn.Module):
    """This rank's experts at ``deepspeed_experts.<local id>``, tagged as expert parameters.

    Args:
        experts: the local experts, in global-id order.
        group_name: DeepSpeed's name of the expert-data-parallel group (``ep_size_<G>``).
    """

    def __init__(self, experts: list[nn.Module], group_name: str) -> None:
        super().__init__()
        self.deepspeed_experts = nn.ModuleList(experts)
        self.num_local_experts = len(experts)
        tag_expert_parameters(self, group_name)


class NoGate(nn.Module):
    """Stands in for DeepSpeed's gate where our dispatcher routes (it is never called)."""

    def _set_ep_group(self, ep_group: Any) -> None:
        """DeepSpeed hands every gate the EP group; this one needs none."""

    def forward(self, *args: Any) -> None:
        """Refuses: the layer's tokens travel through ``moe_dispatch.DroplessDispatcher``."""
        raise RuntimeError("this expert-parallel layer dispatches its tokens itself (dropless); no gate runs")


def tag_expert_parameters(module: nn.Module, group_name: str) -> None:
    """Mark every parameter of ``module`` as an expert parameter of DeepSpeed's group ``group_name``."""
    for p in module.parameters():
        p.allreduce = False  # type: ignore[attr-defined]
        p.group_name = group_name  # type: ignore[attr-defined]


def expert_container(
    num_experts: int, ep_size: int, experts: nn.Module | None = None, gate: nn.Module | None = None
) -> MoE:
    """A DeepSpeed ``MoE`` of ``num_experts`` experts over ``ep_size`` ranks holding ``experts`` and ``gate``.

    Args:
        num_experts: experts of the layer over the whole EP group.
        ep_size: EP group size (divides ``num_experts``).
        experts: the local experts module (``deepspeed_experts`` list, tagged), or None for the caller to
            set as ``moe.deepspeed_moe.experts`` (it may need ``moe.expert_group_name`` first).
        gate: the gate (default ``NoGate``).
    """
    with torch.random.fork_rng(devices=[]):  # DeepSpeed's own gate and experts draw random numbers
        moe = MoE(hidden_size=1, expert=nn.Identity(), num_experts=num_experts, ep_size=ep_size, k=1, use_rts=False)
    moe.deepspeed_moe.gate = gate if gate is not None else NoGate()
    if experts is not None:
        moe.deepspeed_moe.experts = experts
    return moe


def dispatcher_of(moe: MoE) -> MOELayer:
    """DeepSpeed's ``MOELayer`` inside ``moe`` (its EP group once the engine has set it)."""
    return cast(MOELayer, moe.deepspeed_moe)


def group_name(moe: MoE) -> str:
    """DeepSpeed's name of the layer's expert-data-parallel group."""
    return str(moe.expert_group_name)
