"""Kunlun's routed MoWE under expert parallelism (``MoEBackend.DEEPSPEED``): ``ExpertParallelMoWE``.

What is what (docs/models/kunlun.md §"MoWE and expert parallelism"):

- an **expert** is one ``WukongExpert`` (a stack of Wukong layers, ``[B, I, D] -> [B, n, D]``);
  the E experts of a MoWE layer are placed contiguously over the EP group of size G: EP rank r
  holds experts ``[r·E/G, (r+1)·E/G)`` (DeepSpeed's EP groups are consecutive ranks, r = rank % G),
  inside a DeepSpeed ``MoE`` container (``deepspeed_moe.py``): its parameters are expert parameters,
  their gradients reduced only over the expert-data-parallel group;
- a **token** is one example's ``[I, D]`` block of interaction tokens (flattened to ``[I·D]``); it
  goes to each of its top_k experts' ranks and comes back as ``[n·D]`` (``moe_dispatch.py``,
  dropless: one host read of the split sizes per layer and step);
- the router and the balance loss are the reference module's (non-expert, data-parallel); with
  ``sharding.moe.balance_stats: global`` the balance statistics are summed over all ranks, so the
  auxiliary loss is the single-device model's on the global batch.

Only ``partition: routed`` has routes; the fixed partitions run every expert on every example
(configuration checks refuse them with ``ep_size > 1``).

Tensor legend: B examples on this rank, I input tokens, n output tokens, D token width, K routes per
example (top_k), R = B·K routes, T rows received, E experts, G EP ranks, N local experts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import torch
import torch.distributed as dist
from deepspeed.moe.layer import MoE
from torch import nn

from recscale.modules.flops import FlopCount
from recscale.modules.hilomoe.layer import MoEBackend
from recscale.modules.kunlun.mowe import MixtureOfWukongExperts, Routes, WukongExpert
from recscale.sharding.deepspeed_moe import LocalExperts, dispatcher_of, expert_container
from recscale.sharding.moe_dispatch import DroplessDispatcher

if TYPE_CHECKING:  # imported where used: the checkpoint package is not needed to train
    from recscale.sharding.checkpoint.experts import ExpertSlot

EXPERTS_PREFIX = "moe.deepspeed_moe.experts.deepspeed_experts."
"""Where this rank's experts sit inside the block (DeepSpeed's layout: one checkpoint file per expert)."""


class ExpertParallelMoWE(MixtureOfWukongExperts):
    """A routed MoWE whose experts are spread over the EP group: same math as the reference.

    Router, balance loss and options are the reference's (the router module is moved over, not
    copied); this rank keeps only its experts, moved into a DeepSpeed ``MoE`` container. Build it
    with ``from_reference``.

    Args:
        reference: the routed MoWE to convert (every rank holds the same one, built with one seed).
        ep_size: G, expert-parallel group size (divides E).
        ep_rank: this rank's position in its EP group.
    """

    backend = MoEBackend.DEEPSPEED

    def __init__(self, reference: MixtureOfWukongExperts, ep_size: int, ep_rank: int) -> None:
        nn.Module.__init__(self)
        if reference.router is None:
            partition = reference.opts.partition
            raise ValueError(
                f"sharding.ep_size: {ep_size} needs model.kunlun.mowe.partition: routed, got {partition!r}"
            )
        e = reference.num_experts
        if e % ep_size:
            raise ValueError(
                f"model.kunlun.mowe.num_experts: {e} experts cannot be split over sharding.ep_size {ep_size}"
            )
        self.opts = reference.opts
        self.num_in, self.num_out, self.dim = reference.num_in, reference.num_out, reference.dim
        self.num_experts = e
        self.index, self.out_sizes = reference.index, reference.out_sizes
        self.stats_reducer = reference.stats_reducer
        self.router = reference.router
        self.ep_size, self.ep_rank = ep_size, ep_rank
        local = e // ep_size
        self.first_expert = ep_rank * local
        """Global id of this rank's first expert."""
        self.moe: MoE = expert_container(e, ep_size)
        mine = [reference.experts[g] for g in range(self.first_expert, self.first_expert + local)]
        self.moe.deepspeed_moe.experts = LocalExperts(mine, self.moe.expert_group_name)

    @classmethod
    def from_reference(cls, reference: MixtureOfWukongExperts, ep_size: int, ep_rank: int) -> ExpertParallelMoWE:
        """The expert-parallel twin of ``reference`` for EP rank ``ep_rank``."""
        return cls(reference, ep_size, ep_rank)

    def local_experts(self) -> list[WukongExpert]:
        """This rank's experts, in global-id order from ``first_expert``."""
        experts = cast(LocalExperts, dispatcher_of(self.moe).experts)
        return [cast(WukongExpert, expert) for expert in experts.deepspeed_experts]

    def _ep_group(self) -> Any:
        group = dispatcher_of(self.moe).ep_group
        if self.ep_size > 1:
            if group is None:
                raise RuntimeError("expert-parallel MoWE needs deepspeed.initialize (it creates the EP groups)")
            if dist.get_rank(group) != self.ep_rank:
                raise RuntimeError(
                    f"EP rank mismatch: experts were placed for EP rank {self.ep_rank}, DeepSpeed made this rank "
                    f"{dist.get_rank(group)}; call apply_expert_parallel with DeepSpeed's layout"
                )
        return group

    def expert_slots(self) -> dict[str, ExpertSlot]:
        """Each local expert tensor (name inside this block) and the whole reference tensor it is.

        Local expert n is global expert ``first_expert + n``, the reference's ``experts.<g>``: its
        tensors map one to one (``index=()``), so a checkpoint holds the reference model's experts
        whatever ``ep_size`` wrote it (``sharding/checkpoint/experts.py``).
        """
        from recscale.sharding.checkpoint.experts import ExpertSlot

        slots = {}
        for n, expert in enumerate(self.local_experts()):
            for name, tensor in expert.state_dict(keep_vars=True).items():
                reference = f"experts.{self.first_expert + n}.{name}"
                slots[f"{EXPERTS_PREFIX}{n}.{name}"] = ExpertSlot(
                    reference=reference, index=(), shape=tuple(tensor.shape)
                )
        return slots

    def expert_term(self, x_BID: torch.Tensor, routes: Routes) -> torch.Tensor:
        """``[B, n, D]``: each route's token block to its expert's rank and back, weighted and summed."""
        b, i, d = x_BID.shape
        k = self.opts.top_k
        clock = dispatcher_of(self.moe)  # DeepSpeed's layer keeps the exchange times the trainer reads
        dispatcher = DroplessDispatcher(self.num_experts, self.ep_size, self._ep_group(), clock)
        token_R = torch.arange(b, device=x_BID.device).repeat_interleave(k)
        plan = dispatcher.plan(routes.experts_BK.flatten())
        x_TW = dispatcher.dispatch(x_BID.reshape(b, i * d), token_R, plan)
        parts = [
            expert(rows.view(-1, i, d)).flatten(1)
            for expert, rows in zip(self.local_experts(), x_TW.split(cast(list[int], plan.expert_rows)))
        ]
        y_RW = dispatcher.combine(torch.cat(parts), plan) * routes.weights_BK.reshape(-1, 1)
        return y_RW.view(b, k, self.num_out, self.dim).sum(dim=1)

    def expert_flops(self) -> FlopCount:
        """Per-example FLOPs of one expert (all have the same shape; this rank holds at least one)."""
        return self.local_experts()[0].flops()

    def executed_flops(self) -> FlopCount:
        """The routed experts only (dropless: no expert runs on an example that is not routed to it)."""
        return self.flops()

    def extra_repr(self) -> str:
        """The expert-parallel placement."""
        local = len(self.local_experts())
        return (
            f"experts={self.num_experts}, top_k={self.opts.top_k}, ep_size={self.ep_size}, ep_rank={self.ep_rank}, "
            f"local experts {self.first_expert}..{self.first_expert + local - 1}"
        )


def apply_mowe_expert_parallel(dense: nn.Module, ep_size: int, ep_rank: int) -> list[str]:
    """Swap every routed reference MoWE inside ``dense`` for its expert-parallel twin; return their paths.

    Nothing changes at ``ep_size`` 1 (the reference module runs every expert locally, without host
    synchronisation). A MoWE with a fixed partition is refused at ``ep_size > 1``.
    """
    if ep_size == 1:
        return []
    swapped = []
    for path, module in list(dense.named_modules()):
        if isinstance(module, MixtureOfWukongExperts) and not isinstance(module, ExpertParallelMoWE):
            twin = ExpertParallelMoWE.from_reference(module, ep_size, ep_rank)
            parent_path, _, name = path.rpartition(".")
            setattr(dense.get_submodule(parent_path), name, twin)
            swapped.append(path)
    return swapped
