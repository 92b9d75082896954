"""Three-stage training, module side: what each stage trains, and that frozen parameters stay put."""

from __future__ import annotations

import pytest
import torch

from recscale.configs.schema import HiLoMoEConfig, StageConfig
from recscale.modules.dcnv2 import DCNv2Dense
from recscale.modules.hilomoe import (
    apply_training_stage,
    build_moe_dense,
    moe_blocks,
    param_roles,
    role_param_groups,
    stage_group_scales,
    stage_lr_scales,
)

STAGES = [
    StageConfig(name="backbone", train="backbone", steps=2),
    StageConfig(name="experts", train="experts", steps=2, expert_lr_scale=2.0, z_loss_scale=0.5),
    StageConfig(name="joint", train="all", steps=2, backbone_lr_scale=0.1),
]


def _model():
    torch.manual_seed(0)
    inner = DCNv2Dense(3, 16, bottom=[8], deep=[24, 12], num_cross_layers=1, low_rank=4)
    return build_moe_dense(
        inner, HiLoMoEConfig(num_experts=4, num_layers=2, routing="topk", expert_init_std=0.1), ["deep"]
    )


def test_roles_of_parameters():
    roles = param_roles(_model())
    assert roles["inner.deep.0.experts_v"] == roles["inner.deep.2.experts_u"] == "experts"
    assert roles["inner.deep.0.router.query.weight"] == "routers"
    assert roles["inner.deep.0.base.weight"] == roles["inner.cross.0.down.weight"] == "backbone"
    assert roles["inner.head.weight"] == roles["inner.bottom.0.weight"] == "backbone"


def test_each_stage_freezes_the_right_parameters():
    model = _model()
    roles = param_roles(model)
    trained = {"backbone": {"backbone"}, "experts": {"experts", "routers"}, "all": {"backbone", "experts", "routers"}}
    for stage in STAGES:
        apply_training_stage(model, stage)
        for name, p in model.named_parameters():
            assert p.requires_grad == (roles[name] in trained[stage.train]), (stage.name, name)
        assert all(b.experts_enabled == (stage.train != "backbone") for _, b in moe_blocks(model))
    apply_training_stage(model, STAGES[1])
    assert all(b.aux_scales.z_loss == 0.5 for _, b in moe_blocks(model))


def test_stage_learning_rate_scales():
    assert stage_lr_scales(STAGES[0]) == {"backbone": 1.0, "experts": 0.0, "routers": 0.0, "sparse": 1.0}
    assert stage_lr_scales(STAGES[1]) == {"backbone": 0.0, "experts": 2.0, "routers": 1.0, "sparse": 0.0}
    assert stage_lr_scales(STAGES[2]) == {"backbone": 0.1, "experts": 1.0, "routers": 1.0, "sparse": 1.0}
    groups = role_param_groups(_model(), weight_decay=0.0)
    assert [g["role"] for g in groups] == ["backbone", "experts", "routers"]
    assert stage_group_scales(groups, STAGES[1]) == [0.0, 2.0, 1.0]
    assert sum(len(g["params"]) for g in groups) == len(list(_model().parameters()))


def test_three_stages_move_only_their_parameters():
    model = _model()
    roles = param_roles(model)
    groups = role_param_groups(model)
    opt = torch.optim.Adam(groups, lr=0.01)
    g = torch.Generator().manual_seed(1)
    for stage in STAGES:
        apply_training_stage(model, stage)
        for group, scale in zip(opt.param_groups, stage_group_scales(opt.param_groups, stage)):
            group["lr"] = 0.01 * scale
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        for _ in range(stage.steps):
            logits, aux, _ = model(torch.randn(8, 3, generator=g), torch.randn(8, 16, generator=g))
            loss = logits.square().mean() + aux
            opt.zero_grad()
            loss.backward()
            opt.step()
        moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        if stage.train == "backbone":
            assert moved and all(roles[n] == "backbone" for n in moved)
        elif stage.train == "experts":
            assert moved and all(roles[n] != "backbone" for n in moved)
        else:
            assert {roles[n] for n in moved} == {"backbone", "experts", "routers"}


def test_unknown_stage_kind_is_a_config_error():
    with pytest.raises(ValueError, match=r"trainer.stages \(x\).train"):
        apply_training_stage(_model(), StageConfig(name="x", train="bogus", steps=1))  # type: ignore[arg-type]
