"""Three-stage HiLoMoE training, module side: which parameters train in a stage, and at what rate.

The trainer calls, at every stage boundary (and again after a resume inside a stage)::

    apply_training_stage(dense, stage)                      # requires_grad, experts on/off, aux scales
    scales = stage_group_scales(optimizer.param_groups, stage)   # lr multiplier of every group

Stages (``StageConfig.train``, our reconstruction; docs/models/hilomoe.md):

- ``backbone``: experts off (each block is its base layer; routing skipped, no aux loss), only
  backbone parameters train;
- ``experts``: routers and rank-1 experts train, the backbone (embeddings included: sparse lr
  scale 0) is frozen;
- ``all``: everything trains.

A role that a stage does not train gets learning rate 0 as well as ``requires_grad=False``: a
frozen parameter then cannot move even where a wrapper hands it a zero gradient (DeepSpeed fills
missing gradients with zeros, and Adam would still step on its momentum).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from recscale.configs.schema import StageConfig
from recscale.modules.hilomoe.convert import moe_blocks
from recscale.modules.hilomoe.layer import Role

ROLES: tuple[Role, ...] = ("backbone", "experts", "routers")
"""Parameter roles; the embedding tables are the fourth, ``sparse``, owned by TorchRec."""

TRAINED: dict[str, frozenset[str]] = {
    "backbone": frozenset({"backbone", "sparse"}),
    "experts": frozenset({"experts", "routers"}),
    "all": frozenset({"backbone", "sparse", "experts", "routers"}),
}
"""Roles each kind of stage trains."""


def param_roles(model: nn.Module) -> dict[str, Role]:
    """Role of every parameter of ``model`` by name (parameters outside HiLoMoE blocks: backbone)."""
    by_id: dict[int, Role] = {}
    for _, block in moe_blocks(model):
        for name, p in block.named_parameters():
            by_id[id(p)] = block.expert_param_role(name)
    return {name: by_id.get(id(p), "backbone") for name, p in model.named_parameters()}


def apply_training_stage(model: nn.Module, stage: StageConfig) -> None:
    """Set ``requires_grad``, the experts switch and the aux-loss scales of ``model`` for ``stage``.

    Idempotent; call it again after a resume. Wrappers that fix their parameter set at
    construction (DDP) must be rebuilt afterwards (see ``docs/models/hilomoe.md``).
    """
    if stage.train not in TRAINED:
        raise ValueError(f"trainer.stages ({stage.name}).train: expected one of {sorted(TRAINED)}, got {stage.train!r}")
    trained = TRAINED[stage.train]
    for _, block in moe_blocks(model):
        block.experts_enabled = stage.train != "backbone"
        block.set_aux_scales(stage.load_balance_scale, stage.z_loss_scale, stage.diversity_scale)
        block.last_aux = None
    roles = param_roles(model)
    for name, p in model.named_parameters():
        p.requires_grad_(roles[name] in trained)


def stage_lr_scales(stage: StageConfig) -> dict[str, float]:
    """Learning-rate multiplier of each role (``sparse`` = the embedding tables) in ``stage``."""
    scales = {
        "backbone": stage.backbone_lr_scale,
        "experts": stage.expert_lr_scale,
        "routers": stage.router_lr_scale,
        "sparse": stage.sparse_lr_scale,
    }
    trained = TRAINED[stage.train]
    return {role: (scale if role in trained else 0.0) for role, scale in scales.items()}


def role_param_groups(model: nn.Module, **group_options: Any) -> list[dict[str, Any]]:
    """One optimizer group per role, with **all** parameters (frozen ones too), tagged ``role``.

    Built once, before the first stage, so optimizer state carries across stages. DeepSpeed's
    ``split_params_into_different_moe_groups_for_optimizer`` keeps the ``role`` key when it splits
    the expert parameters out.
    """
    roles = param_roles(model)
    params = dict(model.named_parameters())
    groups = []
    for role in ROLES:
        members = [params[n] for n, r in roles.items() if r == role]
        if members:
            groups.append({"params": members, "name": role, "role": role, **group_options})
    return groups


def stage_group_scales(param_groups: list[dict[str, Any]], stage: StageConfig) -> list[float]:
    """Learning-rate multiplier of each optimizer group (by its ``role`` key; untagged = backbone)."""
    scales = stage_lr_scales(stage)
    return [scales[g.get("role", "backbone")] for g in param_groups]
