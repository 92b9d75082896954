"""Wukong: the interaction layer's structure, the embedding tokens, FLOPs, registry and checks."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from recscale.configs.validate import collect_problems
from recscale.modules.build import build_model, flops_per_example
from recscale.modules.flops import total
from recscale.modules.registry import check_model
from recscale.modules.wukong import WukongDense, WukongLayer
from tests.batches import tiny_config


def test_layer_is_ln_of_fmb_lcb_concat_plus_residual():
    torch.manual_seed(0)
    layer = WukongLayer(num_tokens=6, dim=4, num_fmb_tokens=3, num_lcb_tokens=2, fm_rank=5, fmb_mlp=[16])
    x = torch.randn(7, 6, 4)
    lcb = layer.lcb.weight @ x
    fm = x @ (x.transpose(1, 2) @ layer.fmb.projection)  # X (Xᵀ Y), [B, N, K]
    fmb = layer.fmb.mlp(layer.fmb.norm(fm.flatten(1))).view(7, 3, 4)
    expected = torch.nn.functional.layer_norm(
        torch.cat([fmb, lcb], 1) + layer.residual.weight @ x, (4,), layer.norm.weight, layer.norm.bias
    )
    torch.testing.assert_close(layer(x), expected)


def test_residual_is_identity_when_the_token_count_is_kept():
    layer = WukongLayer(num_tokens=5, dim=4, num_fmb_tokens=3, num_lcb_tokens=2, fm_rank=2, fmb_mlp=[])
    assert layer.residual is None and layer(torch.randn(2, 5, 4)).shape == (2, 5, 4)


def _dense(**kwargs) -> WukongDense:
    torch.manual_seed(0)
    args = dict(
        num_dense=3,
        feature_names=["a", "b", "c", "d", "e"],
        feature_dims=[8, 8, 8, 4, 4],
        num_tasks=2,
        dim=8,
        num_layers=3,
        num_fmb_tokens=4,
        num_lcb_tokens=3,
        fm_rank=5,
        fmb_mlp=[32, 16],
        over_arch=[20],
        tokens_per_feature={"b": 3},
        grouped_features=["d", "e"],
        grouped_tokens=2,
        grouped_mlp=[6],
        dense_arch=[10],
        dense_tokens=2,
    )
    args.update(kwargs)
    return WukongDense(**args)


def test_embedding_tokens_per_feature_groups_and_dense():
    model = _dense()
    # 2 dense tokens + a, c (one each) + b (3 projected) + group d, e (2)
    assert model.embedding.num_tokens == 2 + 2 + 3 + 2
    pooled = torch.randn(4, 32)
    tokens = model.embedding(torch.randn(4, 3), pooled)
    assert tokens.shape == (4, 9, 8)
    torch.testing.assert_close(tokens[:, 2], pooled[:, 0:8])  # feature a, as is
    torch.testing.assert_close(tokens[:, 3], pooled[:, 16:24])  # feature c, as is
    logits, aux, diag = model(torch.randn(4, 3), pooled)
    assert logits.shape == (4, 2) and float(aux) == 0.0 and diag == {}


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"attentive_fm": True, "attentive_mlp": [12]},
        {"num_layers": 1, "num_fmb_tokens": 9, "num_lcb_tokens": 0, "fm_rank": 3, "fmb_mlp": []},
        {"num_layers": 4, "num_fmb_tokens": 8, "num_lcb_tokens": 8, "fm_rank": 16, "fmb_mlp": [64, 64, 64]},
        {"num_dense": 0, "dense_tokens": 0, "tokens_per_feature": {}, "grouped_features": []},
    ],
)
def test_flops_match_flop_counter(kwargs):
    model = _dense(**kwargs)
    b = 5
    dense = torch.randn(b, model.embedding.dense_mlp.in_dim if model.embedding.dense_mlp is not None else 0)
    pooled = torch.randn(b, 32, requires_grad=True)
    with FlopCounterMode(display=False) as fwd:
        logits, _, _ = model(dense, pooled)
    with FlopCounterMode(display=False) as bwd:
        logits.sum().backward()
    count = total(model.flops())
    assert fwd.get_total_flops() == b * count.forward
    assert bwd.get_total_flops() == b * count.backward


def test_registry_builds_wukong_from_config():
    cfg = tiny_config(
        model={"arch": "wukong", "dense_arch": [16], "over_arch": [16], "wukong": {"num_layers": 2, "fmb_mlp": [32]}}
    )
    assert check_model(cfg) == [] and collect_problems(cfg) == []
    built = build_model(cfg, sparse_device="cpu")
    assert isinstance(built.dense, WukongDense)
    assert built.dense.embedding.num_tokens == 1 + 4
    assert flops_per_example(cfg).forward == total(built.dense.flops()).forward


def test_wukong_config_problems_name_their_keys():
    cfg = tiny_config(
        embeddings={
            "dim": 8,
            "tables": [{"name": f"t{i}", "num_embeddings": 8, "dim": 4 + 4 * (i % 2)} for i in range(4)],
        },
        model={
            "arch": "wukong",
            "wukong": {"fm_rank": 0, "tokens_per_feature": {"nope": 2}, "attentive_fm": True, "num_lcb_tokens": 0},
        },
    )
    problems = "\n".join(check_model(cfg))
    for key in (
        "model.wukong.fm_rank",
        "model.wukong.tokens_per_feature.nope",
        "model.wukong.attentive_fm",
        "model.wukong.dim",
    ):
        assert key in problems
    cfg.model.wukong = type(cfg.model.wukong)(dim=8)
    assert check_model(cfg) == []  # mixed widths are projected to the token width
    built = build_model(cfg, sparse_device="cpu")
    assert len(built.dense.embedding.projections) == 2
