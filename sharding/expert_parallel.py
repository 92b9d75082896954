"""Expert parallelism: ``apply_expert_parallel`` swaps a dense arch's expert layers for expert-parallel twins.

Two kinds of expert layers have twins (``MoEBackend.DEEPSPEED``), each keeping only this rank's
experts inside a DeepSpeed ``MoE`` container (``deepspeed_moe.py``):

- HiLoMoE blocks (``HiLoMoELinear`` -> ``DeepSpeedHiLoMoELinear``, ``hilomoe_ep.py``), at any ``ep_size``;
- Kunlun's routed MoWE (``MixtureOfWukongExperts`` -> ``ExpertParallelMoWE``, ``kunlun_ep.py``), at
  ``ep_size > 1`` (at 1 the reference module is kept: it runs without host synchronisation).

Tokens travel to their experts' ranks through the dropless dispatcher (``moe_dispatch.py``: split
sizes, nothing dropped), or DeepSpeed's capacity-padded ``MOELayer`` for HiLoMoE with
``sharding.moe.exchange: padded``. See docs/sharding.md §"Expert parallelism".
"""

from __future__ import annotations

import torch.distributed as dist
from torch import nn

from recscale.configs.schema import MoEParallelConfig
from recscale.modules.hilomoe.convert import moe_blocks
from recscale.modules.hilomoe.layer import HiLoMoELinear
from recscale.modules.kunlun.mowe import MixtureOfWukongExperts
from recscale.sharding.hilomoe_ep import DeepSpeedHiLoMoELinear
from recscale.sharding.kunlun_ep import ExpertParallelMoWE, apply_mowe_expert_parallel
from recscale.sharding.moe_collectives import install_global_balance_stats
from recscale.sharding.process_group import deepspeed_environment

__all__ = ["DeepSpeedHiLoMoELinear", "ExpertParallelMoWE", "apply_expert_parallel"]


def apply_expert_parallel(
    dense: nn.Module, ep_size: int, cfg: MoEParallelConfig | None = None, ep_rank: int | None = None
) -> nn.Module:
    """Swap every reference expert layer in ``dense`` for its expert-parallel twin; returns ``dense``.

    (A bare ``HiLoMoELinear`` or routed ``MixtureOfWukongExperts`` passed as ``dense`` comes back as its twin.)

    Call before ``deepspeed.initialize`` (inside ``parallelize()``), on every rank, after the model
    was built with the same seed everywhere. DeepSpeed's EP groups are consecutive ranks, so this
    rank's EP position is ``rank % ep_size`` unless given. Under ``balance_stats: global`` the
    layers' balance statistics are summed over all ranks.

    Args:
        dense: the dense arch (modified in place).
        ep_size: expert-parallel group size (divides the world size and each dispatch's experts).
        cfg: ``sharding.moe``.
        ep_rank: this rank's EP position (default ``rank % ep_size``).

    Raises:
        ValueError: a MoWE with a fixed partition, or ``exchange: padded``, at ``ep_size > 1``.
    """
    deepspeed_environment()  # before DeepSpeed's communication starts (see its docstring)
    cfg = cfg or MoEParallelConfig()
    if ep_rank is None:
        ep_rank = dist.get_rank() % ep_size if dist.is_initialized() else 0
    if isinstance(dense, HiLoMoELinear):  # a bare block
        dense = DeepSpeedHiLoMoELinear.from_reference(dense, ep_size, ep_rank, cfg)
    for path, block in moe_blocks(dense):
        if not isinstance(block, HiLoMoELinear):
            continue
        twin = DeepSpeedHiLoMoELinear.from_reference(block, ep_size, ep_rank, cfg)
        parent_path, _, name = path.rpartition(".")
        setattr(dense.get_submodule(parent_path), name, twin)
    has_mowe = any(isinstance(m, MixtureOfWukongExperts) for m in dense.modules())
    if has_mowe and ep_size > 1 and cfg.exchange != "dropless":
        raise ValueError(
            f"sharding.moe.exchange: {cfg.exchange!r} is HiLoMoE's; Kunlun's MoWE sends its tokens dropless"
        )
    if isinstance(dense, MixtureOfWukongExperts) and ep_size > 1:  # a bare MoWE
        if not isinstance(dense, ExpertParallelMoWE):
            dense = ExpertParallelMoWE.from_reference(dense, ep_size, ep_rank)
    else:
        apply_mowe_expert_parallel(dense, ep_size, ep_rank)
    if cfg.balance_stats == "global" and dist.is_initialized() and dist.get_world_size() > 1:
        install_global_balance_stats(dense)
    return dense
