"""Analytic FLOPs of DLRM and DCN-V2 equal what FlopCounterMode counts (forward, and forward+backward)."""

from __future__ import annotations

import pytest
from torch.utils.flop_counter import FlopCounterMode

from recscale.modules.build import build_model, dense_flops
from recscale.modules.flops import total
from recscale.modules.model import RecModel
from tests.batches import random_batch, tiny_config

B = 32


def counted(cfg, backward: bool) -> float:
    built = build_model(cfg, dense_device="cpu", sparse_device="cpu")
    model = RecModel(sparse=built.sparse, dense=built.dense)
    batch = random_batch(cfg, B, seed=0)
    counter = FlopCounterMode(display=False)
    with counter:
        loss, _ = model(batch)
        if backward:
            loss.backward()
    return counter.get_total_flops() / B


CASES = {
    "dcnv2-stacked-lowrank": {
        "model": {
            "arch": "dcnv2",
            "dense_arch": [16, 8],
            "over_arch": [32, 16],
            "dcnv2": {"num_cross_layers": 3, "low_rank": 4},
        }
    },
    "dcnv2-parallel-fullrank": {
        "model": {
            "arch": "dcnv2",
            "dense_arch": [],
            "over_arch": [24],
            "dcnv2": {"num_cross_layers": 2, "low_rank": 0, "structure": "parallel"},
        }
    },
    "dlrm": {"model": {"arch": "dlrm", "dense_arch": [16, 8], "over_arch": [32, 16]}},
    "dlrm-self-interaction": {
        "model": {"arch": "dlrm", "dense_arch": [8], "over_arch": [16], "dlrm": {"interaction_self": True}}
    },
    "dlrm-no-dense": {
        "model": {"arch": "dlrm", "dense_arch": [8], "over_arch": [16]},
        "data": {
            "features": {
                "labels": ["label"],
                "dense": [],
                "sparse": [{"name": f"f{i}", "table": f"t{i}"} for i in range(4)],
            }
        },
    },
    "dcnv2-two-tasks": {
        "model": {
            "arch": "dcnv2",
            "dense_arch": [8],
            "over_arch": [16],
            "dcnv2": {"num_cross_layers": 1, "low_rank": 2},
        },
        "data": {
            "features": {
                "labels": ["click", "buy"],
                "dense": ["d0"],
                "sparse": [{"name": f"f{i}", "table": f"t{i}"} for i in range(4)],
            }
        },
    },
}


TWO_TASKS = {
    "features": {
        "labels": ["click", "buy"],
        "dense": ["d0"],
        "sparse": [{"name": f"f{i}", "table": f"t{i}"} for i in range(4)],
    }
}
CASES.update(
    {
        "dcnv2-shared-bottom": {
            "model": {"arch": "dcnv2", "over_arch": [16], "multitask": {"structure": "shared_bottom", "tower": [8]}},
            "data": TWO_TASKS,
        },
        "dcnv2-mmoe-gate-mlp": {
            "model": {
                "arch": "dcnv2",
                "over_arch": [16],
                "multitask": {"structure": "mmoe", "num_experts": 3, "expert_widths": [8], "gate_hidden": [4]},
            },
            "data": TWO_TASKS,
        },
        "dcnv2-mmoe-on-interaction": {
            "model": {
                "arch": "dcnv2",
                "over_arch": [16],
                "multitask": {
                    "structure": "mmoe",
                    "num_experts": 2,
                    "expert_widths": [8],
                    "expert_input": "interaction",
                },
            },
            "data": TWO_TASKS,
        },
        "dcnv2-parallel-ple-on-interaction": {
            "model": {
                "arch": "dcnv2",
                "over_arch": [16],
                "dcnv2": {"structure": "parallel"},
                "multitask": {"structure": "ple", "expert_widths": [8], "tower": [], "expert_input": "interaction"},
            },
            "data": TWO_TASKS,
        },
        "dlrm-ple-on-interaction": {
            "model": {
                "arch": "dlrm",
                "dense_arch": [8],
                "over_arch": [16],
                "multitask": {"structure": "ple", "expert_widths": [12, 6], "expert_input": "interaction"},
            },
            "data": TWO_TASKS,
        },
        "dlrm-ple-two-levels": {
            "model": {
                "arch": "dlrm",
                "dense_arch": [8],
                "over_arch": [16],
                "multitask": {"structure": "ple", "num_levels": 2, "expert_widths": [12, 6], "tower": []},
            },
            "data": TWO_TASKS,
        },
    }
)


@pytest.mark.parametrize("name", list(CASES))
def test_analytic_flops_match_flop_counter(name):
    cfg = tiny_config(**CASES[name])
    analytic = total(dense_flops(cfg))
    assert analytic.forward == counted(cfg, backward=False)
    assert analytic.train == counted(cfg, backward=True)


def test_backward_is_not_simply_twice_forward_when_raw_inputs_need_no_gradient():
    cfg = tiny_config(**CASES["dlrm"])
    flops = dense_flops(cfg)
    bottom = flops["bottom"]
    assert bottom.backward < 2 * bottom.forward  # no gradient w.r.t. the raw dense features
    assert flops["top"].backward == 2 * flops["top"].forward


def test_flops_grow_with_the_cross_rank():
    small = total(dense_flops(tiny_config(model={"arch": "dcnv2", "dcnv2": {"low_rank": 2}}))).forward
    big = total(dense_flops(tiny_config(model={"arch": "dcnv2", "dcnv2": {"low_rank": 8}}))).forward
    assert big > small


def test_frozen_weights_compute_no_weight_gradient():
    cfg = tiny_config(**CASES["dcnv2-stacked-lowrank"])
    built = build_model(cfg, dense_device="cpu", sparse_device="cpu")
    for p in built.dense.cross.parameters():
        p.requires_grad_(False)
    model = RecModel(sparse=built.sparse, dense=built.dense)
    batch = random_batch(cfg, B, seed=0)
    counter = FlopCounterMode(display=False)
    with counter:
        model(batch)[0].backward()
    analytic = total(built.dense.flops())
    assert analytic.train == counter.get_total_flops() / B
    assert analytic.train < total(dense_flops(cfg)).train  # the unfrozen model costs more
