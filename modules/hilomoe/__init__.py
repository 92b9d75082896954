"""HiLoMoE (hierarchical LoRA MoE): rank-1 experts over a base linear layer, routed by a score chain.

Public API:

- ``HiLoMoELinear``: the reference block (``MoEBackend.REFERENCE``), a drop-in for ``nn.Linear``;
- ``convert_towers`` / ``build_moe_dense`` / ``MoEDense``: turn MLP towers of a dense arch into
  HiLoMoE blocks and add their auxiliary losses to its ``DenseOutput``;
- ``apply_training_stage`` / ``role_param_groups`` / ``stage_group_scales``: the three-stage schedule.

See ``docs/models/hilomoe.md``.
"""

from recscale.modules.hilomoe.convert import MoEDense, block_kwargs, build_moe_dense, convert_towers, moe_blocks
from recscale.modules.hilomoe.layer import AuxWeights, HiLoMoEBase, HiLoMoELinear, MoEBackend
from recscale.modules.hilomoe.routing import HierarchicalRouter, MoEAux, Routing
from recscale.modules.hilomoe.stages import (
    apply_training_stage,
    param_roles,
    role_param_groups,
    stage_group_scales,
    stage_lr_scales,
)

__all__ = [
    "AuxWeights",
    "HiLoMoEBase",
    "HiLoMoELinear",
    "HierarchicalRouter",
    "MoEAux",
    "MoEBackend",
    "MoEDense",
    "Routing",
    "apply_training_stage",
    "block_kwargs",
    "build_moe_dense",
    "convert_towers",
    "moe_blocks",
    "param_roles",
    "role_param_groups",
    "stage_group_scales",
    "stage_lr_scales",
]
