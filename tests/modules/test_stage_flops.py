"""HiLoMoE FLOPs follow the training stage: experts off in stage 1, a frozen backbone in stage 2."""

from __future__ import annotations

import pytest
from torch.utils.flop_counter import FlopCounterMode

from recscale.configs import load_config
from recscale.modules.build import build_model
from recscale.modules.flops import total
from recscale.modules.hilomoe import apply_training_stage
from tests.batches import random_batch

B = 16


@pytest.mark.parametrize("stage_index", [0, 1, 2])
def test_analytic_flops_equal_counted_flops_in_every_stage(stage_index):
    cfg = load_config("dcnv2_hilomoe", ["model.over_arch=[32, 16]", "model.hilomoe.num_experts=4"])
    built = build_model(cfg, dense_device="cpu", sparse_device="cpu")
    apply_training_stage(built.dense, cfg.trainer.stages[stage_index])
    model = built.rec_model(aux_loss_weight=1.0)
    counter = FlopCounterMode(display=False)
    with counter:
        model(random_batch(cfg, B, seed=3))[0].backward()
    assert total(built.dense.flops()).train == counter.get_total_flops() / B
